"""An experiment's bf16 and channels-last settings reach whatever its estimator trains."""
import pytest
import torch

from nasjobs.artifacts import ArtifactStore
from nasjobs.records import PENDING, TrialRecord
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner, SpecError, validate_spec

CPU = torch.device("cpu")
SPEC = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=2, epochs=1, seed=4)


def test_bf16_and_channels_last_apply_to_training_only():
    with pytest.raises(SpecError) as exc:
        validate_spec(ExperimentSpec("nb201-cifar10", "nb201", "random", "benchmark", budget=2, epochs=1, seed=0,
                                     bf16=True))
    assert exc.value.field == "bf16" and "trains no network" in exc.value.message
    with pytest.raises(SpecError, match="true or false"):
        validate_spec(ExperimentSpec("digits", "chain_cnn", "random", "train", budget=2, epochs=1, seed=0,
                                     channels_last="yes"))


def test_channels_last_trains_the_same_network_to_the_same_figure(tmp_path):
    plain, last = MemoryStore(), MemoryStore()
    SearchRunner(SPEC, plain, ArtifactStore(tmp_path / "a", 1), CPU).run()
    SearchRunner(ExperimentSpec(**{**SPEC.__dict__, "channels_last": True}), last, ArtifactStore(tmp_path / "b", 1),
                 CPU).run()
    assert [t.arch_key for t in plain.trials] == [t.arch_key for t in last.trials]
    for a, b in zip(plain.trials, last.trials):
        assert b.val_acc == pytest.approx(a.val_acc, abs=0.02)


def test_a_bf16_trial_on_the_cpu_fails_with_the_reason(tmp_path):
    runner = SearchRunner(ExperimentSpec(**{**SPEC.__dict__, "bf16": True}), MemoryStore(),
                          ArtifactStore(tmp_path, 1), CPU)
    trial = TrialRecord(0, "c16k3", "c16k3", 0.0, 0, 0, 0.0, {}, [], status=PENDING)
    with pytest.raises(ValueError, match="bf16 autocast needs a CUDA device"):
        runner.execute(trial, lambda: None)
