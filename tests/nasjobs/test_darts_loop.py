"""DARTS through the platform's search loop: one search of `epochs` epochs recorded epoch by epoch, the derived
architecture trained from scratch as the single trial, and a run killed between epochs resuming from the
artifact store's checkpoint to the genotype of an uninterrupted run."""
import pytest
import torch

from nasjobs.artifacts import ArtifactStore
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner, validate_spec

CPU = torch.device("cpu")
EPOCH_FIELDS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "alphas", "ops", "edges", "genotype",
                "param_free_fraction", "stopped_early", "seconds"}


def spec(epochs: int = 2, **strategy: object) -> ExperimentSpec:
    options = {"space": {"channels": 4, "cells": 1},
               "strategy": {"init_channels": 4, "layers": 1, "batch_size": 64, "final_epochs": 1, **strategy}}
    return validate_spec(ExperimentSpec("digits", "nb201", "darts", "train", budget=50, epochs=epochs, seed=3,
                                        top_k=1, options=options))


def run(experiment: ExperimentSpec, store: MemoryStore, root) -> MemoryStore:
    SearchRunner(experiment, store, ArtifactStore(root, 7), CPU).run()
    return store


class KilledStore(MemoryStore):
    """Dies like a killed worker when the loop starts to record epoch `at` (the epoch before it is checkpointed)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def record_epoch(self, record):
        if record["epoch"] == self.at:
            raise SystemExit("worker killed")
        super().record_epoch(record)


def test_the_budget_is_one_search_and_epochs_count_search_epochs():
    experiment = spec(epochs=2)
    assert experiment.budget == 1 and experiment.epochs == 2


def test_a_search_records_each_epoch_then_trains_the_derived_cell_from_scratch(tmp_path):
    store = run(spec(epochs=2), MemoryStore(), tmp_path)
    assert sorted(store.epochs) == [1, 2]
    assert all(set(row) == EPOCH_FIELDS for row in store.epochs.values())
    assert all(abs(sum(p) - 1) < 1e-5 for row in store.epochs.values() for p in row["alphas"]["cell"])
    [trial] = store.trials
    assert trial.arch_key == store.epochs[2]["genotype"]
    assert trial.estimator == "train" and trial.fidelity["epochs"] == 1
    assert trial.fidelity["supernet_val_acc"] == store.epochs[2]["val_acc"]
    assert trial.fidelity["search_epochs"] == 2
    assert trial.weights_path and trial.params > 0 and trial.flops > 0
    best_number, test_acc = store.best
    assert best_number == 0 and 0.0 <= test_acc <= 1.0
    assert store.stop_reason == "budget"
    assert ArtifactStore(tmp_path, 7).load_checkpoint()["epoch"] == 2


def test_without_final_training_the_supernet_figure_is_reported_as_such(tmp_path):
    store = run(spec(epochs=1, final_train=False), MemoryStore(), tmp_path)
    [trial] = store.trials
    assert trial.estimator == "supernet" and trial.fidelity["estimator"] == "supernet"
    assert trial.val_acc == store.epochs[1]["val_acc"]
    assert store.best == (0, None)  # nothing was trained from scratch, so nothing is tested


def test_a_killed_search_resumes_from_its_checkpoint_to_the_uninterrupted_genotype(tmp_path):
    uninterrupted = run(spec(epochs=3), MemoryStore(), tmp_path / "a")
    killed = KilledStore(at=3)
    with pytest.raises(SystemExit):
        run(spec(epochs=3), killed, tmp_path / "b")
    assert sorted(killed.epochs) == [1, 2] and not killed.trials
    resumed = MemoryStore(state=killed.state, trials=list(killed.trials), epochs=dict(killed.epochs))
    run(spec(epochs=3), resumed, tmp_path / "b")
    assert sorted(resumed.epochs) == [1, 2, 3]
    assert [t.arch_key for t in resumed.trials] == [t.arch_key for t in uninterrupted.trials]
    for epoch in (1, 2, 3):
        assert resumed.epochs[epoch]["alphas"] == uninterrupted.epochs[epoch]["alphas"]
        assert resumed.epochs[epoch]["genotype"] == uninterrupted.epochs[epoch]["genotype"]
    assert resumed.trials[0].val_acc == uninterrupted.trials[0].val_acc


def test_a_finished_search_is_not_repeated_on_resume(tmp_path):
    store = run(spec(epochs=1), MemoryStore(), tmp_path)
    again = MemoryStore(state=store.state, trials=list(store.trials), epochs=dict(store.epochs))
    run(spec(epochs=1), again, tmp_path)
    assert [t.arch_key for t in again.trials] == [t.arch_key for t in store.trials]
    assert again.trials[0].train_seconds == store.trials[0].train_seconds
