import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch

from nasjobs.artifacts import ArtifactStore
from nasjobs.calibration import rank_correlation
from nasjobs.chain_supernet import ChainSuperNet
from nasjobs.datasets import load_digits
from nasjobs.estimators import ESTIMATORS
from nasjobs.estimators.low_fidelity import LowFidelityConfig, LowFidelityEstimator, stratified_subset
from nasjobs.estimators.median_stopping import MedianStoppingConfig, MedianStoppingEstimator
from nasjobs.estimators.weight_sharing import WeightSharingConfig, WeightSharingEstimator, path_state
from nasjobs.estimators.zero_cost import ZeroCostConfig
from nasjobs.metrics import count_params
from nasjobs.options import OptionError, parse_config
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner, SpecError, validate_spec
from nasjobs.spaces.chain_cnn import ChainCNN, ChainCNNConfig
from nasjobs.spaces.darts import Darts
from nasjobs.spaces.nb201 import NB201, NB201Config

CPU = torch.device("cpu")
TINY_CHAIN = ChainCNN(ChainCNNConfig(max_layers=2, filters=(8, 16), kernels=(3,)))
TINY_NB201 = NB201(NB201Config(channels=4, cells=1))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Digits nets are tiny: with several threads, synchronisation costs more than the work (100x on a busy
    machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    arch = TINY_CHAIN.from_str("c16k3-c16k3")
    result = chain.evaluate(arch, 2, seed=0)
    assert result.fidelity["filters"] == [8, 8] and result.fidelity["trained_params"] < result.params
    assert 0.0 <= chain.test_accuracy(arch, result.state) <= 1.0
    assert LowFidelityEstimator(TINY_CHAIN, ds, config, CPU).evaluate(TINY_CHAIN.from_str("c8k3"), 2, seed=0) \
        .fidelity["filters"] == [8]  # 8 is the smallest count a chain CNN layer may have

    class OtherSpace(ChainCNN):
        name = "other"

    with pytest.raises(ValueError, match="width_multiplier"):
        LowFidelityEstimator(OtherSpace(), ds, config, CPU)
    with pytest.raises(OptionError):
        parse_config(LowFidelityConfig, {"data_fraction": 0})


# median stopping --------------------------------------------------------------------------------------------------
def median_stopping(**options):
    return MedianStoppingEstimator(TINY_CHAIN, load_digits(), MedianStoppingConfig(**options), CPU)


def test_the_median_rule_compares_the_best_so_far_with_the_median_of_completed_running_averages():
    estimator = median_stopping(grace_epochs=2, min_completed=3)
    estimator.load_history([[0.5, 0.7, 0.9], [0.6, 0.8, 0.9], [0.2, 0.4, 0.6], [0.9]])
    assert estimator.should_stop([0.9]) is None  # within the grace epochs
    # running averages at k=2: 0.6, 0.7, 0.3 (the one-epoch curve does not reach k=2) -> median 0.6
    assert estimator.median_at(2) == pytest.approx(0.6)
    assert estimator.should_stop([0.1, 0.55]) == pytest.approx(0.6)
    assert estimator.should_stop([0.65, 0.2]) is None  # its best so far is above the median
    assert estimator.median_at(4) is None  # no completed curve reaches epoch 4
    best = median_stopping(grace_epochs=2, statistic="running_best")
    best.load_history([[0.5, 0.7, 0.9], [0.6, 0.8, 0.9], [0.2, 0.4, 0.6]])
    assert best.median_at(2) == pytest.approx(0.7) and best.should_stop([0.1, 0.65]) == pytest.approx(0.7)
    few = median_stopping(min_completed=3)
    few.load_history([[1.0, 1.0], [1.0, 1.0]])
    assert few.should_stop([0.1, 0.1]) is None  # two completed trials are too few to judge


def test_median_stopping_stops_a_clearly_worse_trial_which_keeps_its_last_figure():
    estimator = ESTIMATORS.get("median_stopping")(TINY_CHAIN, load_digits(),
                                                  MedianStoppingConfig(grace_epochs=2, min_completed=3), CPU)
    estimator.load_history([[1.0] * 6] * 3)  # three perfect completed trials
    seen = []
    result = estimator.evaluate(chain_arch(1), 6, seed=0, hook=lambda epoch, acc: seen.append(epoch))
    assert result.fidelity["stopped_at_epoch"] == 2 and result.fidelity["epochs"] == 2
    assert result.fidelity["median_at_stop"] == 1.0 and result.fidelity["estimator"] == "median_stopping"
    assert seen == [1, 2] and len(result.curve) == 2 and result.val_acc == result.curve[-1]
    assert result.state is not None and len(estimator.history) == 3  # a stopped trial is not "completed"
    assert 0.0 <= estimator.test_accuracy(chain_arch(1), result.state) <= 1.0


def test_a_trial_above_the_median_completes_and_joins_the_history():
    estimator = median_stopping(grace_epochs=1, min_completed=2)
    estimator.load_history([[0.0, 0.0], [0.0, 0.0]])
    result = estimator.evaluate(chain_arch(1), 2, seed=0)
    assert "stopped_at_epoch" not in result.fidelity and result.fidelity["epochs"] == 2
    assert estimator.history[-1] == result.curve and len(estimator.history) == 3


# zero cost --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("proxy", ["synflow", "grad_norm", "naswot"])
@pytest.mark.parametrize("space", [TINY_CHAIN, TINY_NB201], ids=["chain_cnn", "nb201"])
def test_zero_cost_scores_are_finite_and_deterministic_for_a_seed(proxy, space):
    estimator = ESTIMATORS.get("zero_cost")(space, load_digits(), ZeroCostConfig(proxy=proxy, batch_size=32), CPU)
    arch = space.sample(random.Random(3))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = estimator.evaluate(arch, 12, seed=5)
    assert torch.equal(torch.rand(1), before)  # the global RNG is left alone
    b = estimator.evaluate(arch, 12, seed=5)
    assert math.isfinite(a.val_acc) and a.val_acc == b.val_acc and a.fidelity == b.fidelity
    f = a.fidelity
    assert f["estimator"] == "zero_cost" and f["proxy"] == proxy and f["epochs"] == 0 and f["batch_size"] == 32
    assert math.isfinite(f["score"]) and a.state is None and a.train_seconds > 0
    if proxy != "naswot":
        assert f["score"] > 0 and a.val_acc == pytest.approx(math.log(f["score"]))


def test_zero_cost_scores_differ_between_architectures_and_the_final_network_is_trained():
    estimator = ESTIMATORS.get("zero_cost")(TINY_CHAIN, load_digits(), ZeroCostConfig(final_epochs=1), CPU)
    small, large = TINY_CHAIN.from_str("c8k3"), TINY_CHAIN.from_str("c16k3-c16k3")
    assert estimator.evaluate(large, 4, seed=0).val_acc > estimator.evaluate(small, 4, seed=0).val_acc
    assert 0.0 <= estimator.test_accuracy(large, None) <= 1.0


# weight sharing ---------------------------------------------------------------------------------------------------
def test_weight_sharing_trains_one_supernet_reuses_it_and_a_restart_loads_it(tmp_path):
    ds, config = load_digits(), WeightSharingConfig(supernet_epochs=2, calibration_batches=2)
    estimator = ESTIMATORS.get("weight_sharing")(TINY_NB201, ds, config, CPU, checkpoint_dir=tmp_path)
    rng = random.Random(0)
    a, b = TINY_NB201.sample(rng), TINY_NB201.sample(rng)
    heartbeats = []
    first = estimator.evaluate(a, 12, seed=0, hook=lambda epoch, acc: heartbeats.append(epoch))
    assert heartbeats == [1, 2, 0]  # the supernet's epochs, then the candidate's score
    second = estimator.evaluate(b, 12, seed=1)
    assert estimator.supernet_trainings == 1  # the second candidate did not retrain it
    f = first.fidelity
    assert f["estimator"] == "weight_sharing" and f["one_shot"] is True and f["supernet_epochs"] == 2
    assert f["supernet_loaded"] is False and f["supernet_checkpoint"].startswith(str(tmp_path))
    assert 0.0 <= first.val_acc <= 1.0 and 0.0 <= second.val_acc <= 1.0
    assert first.params == count_params(TINY_NB201.build(a, ds.input_shape, ds.num_classes))

    restarted = WeightSharingEstimator(TINY_NB201, ds, config, CPU, checkpoint_dir=tmp_path)
    again = restarted.evaluate(a, 12, seed=5)
    assert restarted.supernet_trainings == 0 and again.fidelity["supernet_loaded"] is True
    assert again.val_acc == first.val_acc  # same supernet, same calibration batches: the same figure
    assert estimator.test_accuracy(a, first.state) == restarted.test_accuracy(a, again.state)
    other = WeightSharingEstimator(TINY_NB201, ds, WeightSharingConfig(supernet_epochs=1), CPU,
                                   checkpoint_dir=tmp_path)
    assert other.checkpoint_path() != estimator.checkpoint_path()  # other options: another supernet


def test_a_path_inherits_exactly_its_ops_weights():
    ds = load_digits()
    estimator = WeightSharingEstimator(TINY_NB201, ds, WeightSharingConfig(supernet_epochs=1), CPU)
    supernet = estimator._new_supernet()
    arch = ("nor_conv_3x3", "skip_connect", "nor_conv_1x1", "none", "avg_pool_3x3", "nor_conv_3x3")
    state = path_state(supernet.state_dict(), arch)
    model = TINY_NB201.build(arch, ds.input_shape, ds.num_classes)
    model.load_state_dict(state)  # strict: every key of the standalone network, nothing else
    assert torch.equal(state["cells.0.ops.0.1.weight"], supernet.state_dict()["cells.0.ops.0.nor_conv_3x3.1.weight"])
    with pytest.raises(ValueError, match="weight sharing has a supernet for the chain_cnn, nb201"):
        WeightSharingEstimator(Darts(), ds, WeightSharingConfig(), CPU)
    with pytest.raises(SpecError, match="chain_cnn, nb201"):  # refused when the experiment is submitted
        validate_spec(ExperimentSpec("digits", "darts", "random", "weight_sharing", budget=1, epochs=1, seed=0))


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (3, 5, 7)])
def test_every_chain_cnn_inherits_exactly_the_supernets_function(shape):
    """The standalone network loaded with `path_state` computes what the supernet computes on that path."""
    space = ChainCNN(ChainCNNConfig(max_layers=4, filters=(8, 16, 32), kernels=(1, 3, 5), strides=(1, 2)))
    supernet = ChainSuperNet(space, shape[0], 10)
    with torch.no_grad():  # batch-norm state that is not the identity, so a wrong slice shows
        for i, bn in enumerate(supernet.norms):
            gen = torch.Generator().manual_seed(i)
            bn.running_mean.copy_(torch.rand(bn.num_features, generator=gen) - 0.5)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    supernet.eval()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    rng = random.Random(0)
    for _ in range(30):
        arch = space.sample(rng)
        model = space.build(arch, shape, 10)
        model.load_state_dict(supernet.path_state(supernet.state_dict(), arch, model))  # strict
        model.eval()
        assert torch.allclose(model(x), supernet(x, arch), atol=1e-5), space.to_str(arch)


def test_chain_cnn_paths_share_their_common_slices():
    space = ChainCNN(ChainCNNConfig(max_layers=2, filters=(8, 16), kernels=(1, 3)))
    supernet = ChainSuperNet(space, 1, 10)
    small, large = space.from_str("c8k1-c8k3"), space.from_str("c16k3-c8k3")
    s_model, l_model = (space.build(a, (1, 8, 8), 10) for a in (small, large))
    s_state = supernet.path_state(supernet.state_dict(), small, s_model)
    l_state = supernet.path_state(supernet.state_dict(), large, l_model)
    # Layer 1: the 1x1 kernel is the centre of the 3x3 one, the 8 filters the first of the 16.
    assert torch.equal(s_state["0.weight"], l_state["0.weight"][:8, :, 1:2, 1:2])
    # Layer 2 reads layer 1's first 8 channels in both.
    assert torch.equal(s_state["3.weight"], l_state["3.weight"][:, :8])


# in the search loop -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space,estimator,options", [
    ("chain_cnn", "low_fidelity", {"epoch_fraction": 0.5, "data_fraction": 0.5}),
    ("chain_cnn", "median_stopping", {"grace_epochs": 1, "min_completed": 1}),
    ("chain_cnn", "zero_cost", {"proxy": "naswot"}),
    ("nb201", "weight_sharing", {"supernet_epochs": 1, "calibration_batches": 1}),
    ("chain_cnn", "weight_sharing", {"supernet_epochs": 2, "calibration_batches": 1}),
])
def test_each_estimator_runs_a_search_to_its_final_test_figure(tmp_path, space, estimator, options):
    space_options = {"max_layers": 2, "filters": "8,16"} if space == "chain_cnn" else {"channels": 4, "cells": 1}
    spec = ExperimentSpec("digits", space, "random", estimator, budget=3, epochs=2, seed=1, top_k=1,
                          options={"space": space_options, "estimator": options})
    store = MemoryStore()
    SearchRunner(spec, store, ArtifactStore(tmp_path, 1), CPU).run()
    assert len(store.trials) == 3 and all(t.fidelity["estimator"] == estimator for t in store.trials)
    assert store.best is not None and 0.0 <= store.best[1] <= 1.0


def test_the_estimator_bench_prints_the_documented_json(capsys, monkeypatch):
    path = Path(__file__).resolve().parents[2] / "bench" / "estimators.py"
    spec = importlib.util.spec_from_file_location("bench_estimators", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(path.parent))  # as `python bench/estimators.py` runs it: its folder first
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert bench.main(["--k", "3", "--epochs", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference"] == "train" and report["k"] == 3
    names = [r["estimator"] for r in report["results"]]
    assert names[0].startswith("low_fidelity") and "zero_cost:synflow" in names and "median_stopping" in names
    for r in report["results"]:
        assert set(r) >= {"kendall_tau", "spearman_rho", "seconds_per_candidate"}
        assert -1.0 <= r["kendall_tau"] <= 1.0 and r["seconds_per_candidate"] > 0


def test_the_loop_keeps_the_supernet_in_the_experiments_folder_and_a_restart_reuses_it(tmp_path):
    spec = ExperimentSpec("digits", "nb201", "random", "weight_sharing", budget=2, epochs=1, seed=1, top_k=1,
                          options={"space": {"channels": 4, "cells": 1},
                                   "estimator": {"supernet_epochs": 1, "calibration_batches": 1}})
    runner = SearchRunner(spec, MemoryStore(), ArtifactStore(tmp_path, 1), CPU)
    runner.run()
    files = list((tmp_path / "experiment-1" / "estimator").glob("supernet-*.pt"))
    assert len(files) == 1 and runner.estimator.supernet_trainings == 1
    restarted = SearchRunner(ExperimentSpec(**{**spec.__dict__, "budget": 3}), MemoryStore(),
                             ArtifactStore(tmp_path, 1), CPU)
    restarted.run()
    assert restarted.estimator.supernet_trainings == 0  # loaded, not trained again


def test_median_stopping_compares_a_resumed_trial_with_the_curves_already_recorded(tmp_path):
    spec = ExperimentSpec("digits", "chain_cnn", "random", "median_stopping", budget=3, epochs=2, seed=1, top_k=1,
                          options={"space": {"max_layers": 2, "filters": "8,16"},
                                   "estimator": {"grace_epochs": 1, "min_completed": 1}})
    first = MemoryStore()
    SearchRunner(ExperimentSpec(**{**spec.__dict__, "budget": 2}), first, ArtifactStore(tmp_path, 1), CPU).run()
    resumed = SearchRunner(spec, MemoryStore(state=first.state, trials=list(first.trials)),
                           ArtifactStore(tmp_path, 1), CPU)
    seen = []
    original = resumed.estimator.load_history
    resumed.estimator.load_history = lambda curves: (seen.append(list(curves)), original(curves))[1]
    resumed.run()
    assert seen == [[t.curve for t in first.trials if "stopped_at_epoch" not in t.fidelity]]


def test_a_trial_counts_its_params_and_macs_once_per_architecture(tmp_path, monkeypatch):
    """On a space without a cost formula the figures are counted on the network already built for training,
    once per architecture: successive halving's promotions to later rungs reuse them."""
    import nasjobs.metrics

    counted = []
    count = nasjobs.metrics.count_macs
    monkeypatch.setattr(nasjobs.metrics, "count_macs", lambda model, shape: counted.append(1) or count(model, shape))
    spec = ExperimentSpec("digits", "chain_cnn", "random", "successive_halving", budget=9, epochs=9, seed=0, top_k=1,
                          options={"space": {"max_layers": 2, "filters": "8,16"},
                                   "estimator": {"min_epochs": 1, "eta": 3, "bracket_size": 9}})
    store = MemoryStore()
    SearchRunner(spec, store, ArtifactStore(tmp_path, 1), CPU).run()
    rungs = sum(len(t.fidelity["rungs"]) for t in store.trials)
    assert len(store.trials) == 9 and rungs > 9  # some trials were trained again at a later rung
    assert len(counted) == 9
    space, digits = ChainCNN(ChainCNNConfig(max_layers=2, filters=(8, 16))), load_digits()
    for t in store.trials:
        model = space.build(space.from_str(t.arch_key), digits.input_shape, digits.num_classes)
        assert (t.params, t.flops) == (count_params(model), count(model, digits.input_shape))


@pytest.mark.parametrize("name", sorted(ESTIMATORS.names()))
def test_each_estimator_says_whether_its_figure_is_an_accuracy_or_a_named_score(name):
    from nasjobs.estimators import estimator_figure
    from nasjobs.estimators.zero_cost import PROXIES

    figure = estimator_figure(name)
    if name == "zero_cost":
        assert figure.kind == "score" and figure.name == "log synflow score" and figure.format(650.2417) == "650.2"
        for proxy, (_, log_scale) in PROXIES.items():
            named = estimator_figure(name, {"proxy": proxy})
            assert named.kind == "score" and named.name == ("log " if log_scale else "") + f"{proxy} score"
    else:
        assert figure.kind == "accuracy" and figure.name == "validation accuracy" and figure.format(0.5) == "50.00%"


# chance level -----------------------------------------------------------------------------------------------------
# A learning rate of 10 with a weight decay that pulls every weight to 0 each step: a constant output, no NaN.
DIVERGING = {"lr": 10.0, "weight_decay": 0.1}
TRAINING_ESTIMATORS = ["train", "low_fidelity", "median_stopping", "successive_halving", "hyperband",
                       "weight_sharing"]


def trained_once(name: str, options: dict, tmp_path: Path):
    """One evaluation of a tiny network for two epochs (a rung of two epochs for the multi-fidelity ones)."""
    cls = ESTIMATORS.get(name)
    extra = {"low_fidelity": {"epoch_fraction": 1.0},
             "weight_sharing": {"supernet_epochs": 4, "calibration_batches": 4}}.get(name, {})
    space, seed = (TINY_NB201, 2) if name == "weight_sharing" else (TINY_CHAIN, 0)
    estimator = cls(space, load_digits(), parse_config(cls.Config, {**extra, **options}), CPU)
    estimator.workdir = tmp_path
    arch = space.sample(random.Random(seed))
    if getattr(cls, "multi_fidelity", False):
        return estimator.train_to(arch, 0, 2, 2, seed=0)
    return estimator.evaluate(arch, 2, seed=0)


def test_every_estimator_that_trains_marks_chance_level_and_the_others_do_not():
    marking = sorted(n for n in ESTIMATORS.names() if ESTIMATORS.get(n).marks_chance_level)
    assert marking == sorted(TRAINING_ESTIMATORS)  # a proxy's score and a table's lookup are not accuracies


@pytest.mark.parametrize("name", TRAINING_ESTIMATORS)
def test_a_training_that_learned_nothing_is_marked_at_chance_level(name, tmp_path):
    result = trained_once(name, DIVERGING, tmp_path)
    assert all(math.isfinite(v) for v in result.loss_curve if v is not None)  # no NaN: it trained, uselessly
    assert result.val_acc <= 0.1 + 0.05 and result.fidelity["chance_level"] is True


@pytest.mark.parametrize("name", TRAINING_ESTIMATORS)
def test_a_training_that_learned_is_not_marked(name, tmp_path):
    result = trained_once(name, {}, tmp_path)
    assert result.val_acc > 0.2 and "chance_level" not in result.fidelity


def test_chance_is_guessing_the_most_common_class_of_the_validation_split():
    from nasjobs.training import at_chance, guessing_accuracy

    balanced, skewed = torch.arange(10).repeat(10), torch.tensor([0] * 80 + [1] * 20)
    assert guessing_accuracy(balanced) == pytest.approx(0.1) and guessing_accuracy(skewed) == pytest.approx(0.8)
    assert at_chance(0.11, balanced) and not at_chance(0.5, balanced)
    assert at_chance(0.8, skewed) and not at_chance(0.9, skewed)  # 80% is what "always class 0" scores
    assert not at_chance(1.0, torch.zeros(5, dtype=torch.long))  # one class: nothing to guess
