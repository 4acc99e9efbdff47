import math
import random

import pytest
import torch

from nasjobs.calibration import rank_correlation
from nasjobs.datasets import load_digits
from nasjobs.estimators import ESTIMATORS
from nasjobs.estimators.low_fidelity import LowFidelityConfig, LowFidelityEstimator, stratified_subset
from nasjobs.options import OptionError, parse_config
from nasjobs.spaces.chain_cnn import ChainCNN, ChainCNNConfig
from nasjobs.spaces.nb201 import NB201, NB201Config

CPU = torch.device("cpu")
TINY_CHAIN = ChainCNN(ChainCNNConfig(max_layers=2, filters=(8, 16), kernels=(3,)))
TINY_NB201 = NB201(NB201Config(channels=4, cells=1))


def chain_arch(seed: int):
    return TINY_CHAIN.sample(random.Random(seed))


# calibration ------------------------------------------------------------------------------------------------------
def test_rank_correlation_is_one_for_the_same_order_and_zero_for_a_constant_estimate():
    assert rank_correlation([0.1, 0.5, 0.9], [10, 20, 30]) == pytest.approx((1.0, 1.0))
    assert rank_correlation([3, 2, 1], [10, 20, 30]) == pytest.approx((-1.0, -1.0))
    assert rank_correlation([1, 1, 1], [10, 20, 30]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        rank_correlation([1, 2], [1])


# low fidelity -----------------------------------------------------------------------------------------------------
def test_low_fidelity_trains_the_requested_epochs_on_the_requested_stratified_fraction():
    ds = load_digits()
    config = parse_config(LowFidelityConfig, {"epoch_fraction": 0.25, "data_fraction": 0.5})
    estimator = ESTIMATORS.get("low_fidelity")(TINY_CHAIN, ds, config, CPU)
    arch = chain_arch(0)
    result = estimator.evaluate(arch, 8, seed=1)
    assert len(result.curve) == 2 and result.val_acc == result.curve[-1]
    f = result.fidelity
    assert f["estimator"] == "low_fidelity" and f["epochs"] == 2 and f["full_epochs"] == 8
    assert f["data_fraction"] == 0.5 and f["train_samples"] == len(estimator.train_split)
    assert abs(len(estimator.train_split) - len(ds.train) / 2) <= 10  # rounding per class
    counts = torch.bincount(estimator.train_split.y, minlength=10).float()
    full = torch.bincount(ds.train.y, minlength=10).float()
    assert torch.all((counts - full / 2).abs() <= 1)  # every class halved: stratified
    assert 0.0 <= estimator.test_accuracy(arch, result.state) <= 1.0


def test_the_training_subset_is_fixed_by_its_seed():
    train = load_digits().train
    a, b, c = (stratified_subset(train, 0.3, s) for s in (5, 5, 6))
    assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)


def test_width_multiplier_narrows_each_space_and_is_refused_where_it_means_nothing():
    ds = load_digits()
    config = LowFidelityConfig(epoch_fraction=0.5, width_multiplier=0.5)
    arch = TINY_NB201.sample(random.Random(0))
    nb = LowFidelityEstimator(TINY_NB201, ds, config, CPU).evaluate(arch, 2, seed=0)
    assert nb.fidelity["channels"] == 2 and nb.fidelity["epochs"] == 1
    assert nb.fidelity["trained_params"] < nb.params  # params are the full-width candidate's
    chain = LowFidelityEstimator(TINY_CHAIN, ds, config, CPU)
    result = chain.evaluate(TINY_CHAIN.from_str("c16k3-c8k3"), 2, seed=0)
    assert result.fidelity["filters"] == [8, 4]
    assert 0.0 <= chain.test_accuracy(TINY_CHAIN.from_str("c16k3-c8k3"), result.state) <= 1.0

    class OtherSpace(ChainCNN):
        name = "other"

    with pytest.raises(ValueError, match="width_multiplier"):
        LowFidelityEstimator(OtherSpace(), ds, config, CPU)
    with pytest.raises(OptionError):
        parse_config(LowFidelityConfig, {"data_fraction": 0})
