import pytest
import torch

from nasjobs.artifacts import ArtifactStore
from nasjobs.calibration import calibrate, rank_correlation
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner

CPU = torch.device("cpu")


def searched(tmp_path, space, estimator, options):
    dataset = "nb201-cifar10" if estimator == "benchmark" else "digits"
    spec = ExperimentSpec(dataset, space, "random", estimator, budget=5, epochs=4, seed=2, top_k=1, options=options)
    runner = SearchRunner(spec, MemoryStore(), ArtifactStore(tmp_path, 1), CPU)
    runner.run()
    return runner


def test_a_cheap_estimator_is_compared_with_full_training_of_k_candidates(tmp_path):
    runner = searched(tmp_path, "chain_cnn", "low_fidelity",
                      {"space": {"max_layers": 2, "filters": "8,16"}, "estimator": {"epoch_fraction": 0.25}})
    trials = runner.store.trials
    result = calibrate(runner.space, runner.dataset, runner.estimator, trials, k=4, epochs=4, seed=0, device=CPU)
    assert result.reference == "train 4 epochs" and result.k == 4 and len(result.pairs) == 4
    assert -1 <= result.kendall_tau <= 1 and -1 <= result.spearman_rho <= 1
    estimates = {t.number: t.val_acc for t in trials}
    assert all(p["estimate"] == estimates[p["number"]] for p in result.pairs)
    assert (result.kendall_tau, result.spearman_rho) == rank_correlation(
        [p["estimate"] for p in result.pairs], [p["reference"] for p in result.pairs])
    again = calibrate(runner.space, runner.dataset, runner.estimator, trials, k=4, epochs=4, seed=0, device=CPU)
    assert again.pairs == result.pairs  # seeded: the same candidates, the same reference training


def test_the_benchmark_is_calibrated_against_its_own_ground_truth(tmp_path):
    runner = searched(tmp_path, "nb201", "benchmark", {"estimator": {"count_flops": False}})
    result = calibrate(runner.space, runner.dataset, runner.estimator, runner.store.trials, k=5, epochs=1, seed=0,
                       device=CPU)
    assert result.reference == "benchmark ground truth"
    assert result.kendall_tau > 0.5  # one training seed ranks nearly like the mean over seeds


def test_fewer_than_two_candidates_cannot_be_calibrated(tmp_path):
    runner = searched(tmp_path, "nb201", "benchmark", {})
    with pytest.raises(ValueError):
        calibrate(runner.space, runner.dataset, runner.estimator, runner.store.trials[:1], k=5, epochs=1, seed=0,
                  device=CPU)
