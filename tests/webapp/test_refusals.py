"""Every (space, strategy, estimator, dataset kind) the registries hold is either refused at submission, with a
message naming the conflict, or runs a one-trial search to success on the platform's inline runner.

The combinations come from the registries, so a new component is covered without a new test; its smallest options
must be added to SMALLEST below (a registered component without an entry fails the test rather than skipping)."""
from __future__ import annotations

import itertools
import re
from typing import Any, Iterator

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile

from nasjobs.datasets import KINDS
from nasjobs.estimators import ESTIMATORS
from nasjobs.records import DONE
from nasjobs.search import ExperimentSpec, SpecError
from nasjobs.spaces import SPACES
from nasjobs.strategies import STRATEGIES
from tests.conftest import _member
from tests.datafiles import blobs
from webapp.datasets import services as dataset_services
from webapp.experiments.models import Experiment
from webapp.experiments.runner import experiment_run_inline
from webapp.experiments.services import experiment_create

REGISTRIES = {"space": SPACES, "strategy": STRATEGIES, "estimator": ESTIMATORS}

# The cheapest options of each component that still run its real code: one layer, the narrowest widths, one
# candidate per choice, one-trial strategies, one-epoch supernets. Every search runs with budget 1 and 1 epoch.
SMALLEST: dict[str, dict[str, dict[str, Any]]] = {
    "space": {
        "chain_cnn": {"max_layers": 1, "filters": [8], "kernels": [3], "strides": [1], "pooling": False,
                      "skips": False, "square_kernels": True},  # square kernels: the same space builds for signals
        "darts": {"init_channels": 4, "layers": 1, "ops": ["skip_connect", "sep_conv_3x3"]},
        "mlp": {"max_layers": 1, "widths": [8], "activations": ["relu"], "dropouts": [0.0], "batch_norm": False,
                "skips": False},
        "nb201": {"channels": 4, "cells": 1},
    },
    "strategy": {
        "bo": {"initial": 1, "random_candidates": 10, "max_neighbours": 10},
        "darts": {"init_channels": 4, "layers": 3, "batch_size": 256, "train_portion": 0.2, "final_epochs": 1},
        "evolution": {"population": 2, "sample_size": 1},
        "local_search": {"initial": 1, "max_neighbours": 1},
        "random": {},
        "reinforce": {"hidden": 8, "batch_size": 1},
    },
    "estimator": {
        "benchmark": {},
        "hyperband": {"batch_size": 256},
        "low_fidelity": {"batch_size": 256, "data_fraction": 0.5},
        "median_stopping": {"batch_size": 256},
        "successive_halving": {"batch_size": 256, "bracket_size": 2},
        "train": {"batch_size": 256},
        "weight_sharing": {"batch_size": 256, "supernet_epochs": 1, "calibration_batches": 1},
        "zero_cost": {"batch_size": 256},
    },
}

# One representative dataset per kind: built-ins, and for tables a CSV the test uploads (no table is built in).
TABLE_UPLOAD = "table upload"
DATASET_OF_KIND = {"image": "digits", "signal": "mnist1d", "table": TABLE_UPLOAD, "nb201": "nb201-cifar10"}

COMBINATIONS = list(itertools.product(SPACES.names(), STRATEGIES.names(), ESTIMATORS.names(), KINDS))


def options_for(space: str, strategy: str, estimator: str) -> dict[str, dict[str, Any]]:
    """The smallest options of the three components. An estimator that trains nothing looks its figures up at the
    space's default shape (the NAS-Bench-201 table was measured there), so the space keeps its defaults."""
    trains = ESTIMATORS.get(estimator).trains_networks
    return {"space": dict(SMALLEST["space"][space]) if trains else {},
            "strategy": dict(SMALLEST["strategy"][strategy]), "estimator": dict(SMALLEST["estimator"][estimator])}


def table_dataset(user) -> str:
    """A small CSV of three separable blobs, uploaded and decoded as the platform does; its engine name."""
    x, y = blobs(20, 3, 4)
    lines = ["a,b,c,d,label"] + [",".join(f"{v:.4f}" for v in row) + f",c{label}" for row, label in zip(x, y)]
    upload = SimpleUploadedFile("blobs.csv", ("\n".join(lines) + "\n").encode())
    dataset = dataset_services.dataset_upload(user=user, team=None, name="blobs", kind="csv", upload=upload,
                                              label_column="label")
    assert dataset_services.dataset_process(dataset.pk) == "ready"
    dataset.refresh_from_db()
    return dataset.engine_name


def names_conflict(message: str, parts: dict[str, str]) -> list[str]:
    """Which parts of the combination (`space`, `strategy`, `estimator`, `dataset`, `kind`) a message names (a
    name's underscore may be a space: "weight sharing")."""
    def pattern(name: str) -> str:
        return r"(?<![\w-])" + re.escape(name).replace("_", "[_ ]") + r"(?![\w])"
    return [role for role, name in parts.items() if re.search(pattern(name), message, re.IGNORECASE)]


def test_every_registered_component_and_kind_has_smallest_options_and_a_dataset():
    for component, registry in REGISTRIES.items():
        missing = sorted(set(registry.names()) - set(SMALLEST[component]))
        assert not missing, f"add the smallest options of the {component}(s) {missing} to SMALLEST"
    assert set(DATASET_OF_KIND) == set(KINDS), "every dataset kind needs a representative dataset"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One PyTorch thread, as a worker sharing its CPU runs (`NAS_TORCH_THREADS=1`): networks this small gain
    nothing from more, and on a busy machine extra threads wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def member(django_user_model, vision):
    """A team member without a password: hashing one per combination would cost more than most refusals."""
    return _member(django_user_model.objects.create_user("matrix"), "vision")


@pytest.mark.django_db
@pytest.mark.parametrize("space, strategy, estimator, kind", COMBINATIONS,
                         ids=["-".join(c) for c in COMBINATIONS])
def test_a_combination_is_refused_at_submission_naming_the_conflict_or_runs_to_success(
        space, strategy, estimator, kind, member, settings, tmp_path, monkeypatch):
    settings.NAS_ARTIFACTS_DIR = str(tmp_path / "artifacts")
    dataset = DATASET_OF_KIND[kind]
    if dataset == TABLE_UPLOAD:
        monkeypatch.setenv("NAS_DATA_DIR", str(tmp_path / "data"))
        dataset = table_dataset(member)
    spec = ExperimentSpec(dataset, space, strategy, estimator, budget=1, epochs=1, seed=0, top_k=1,
                          options=options_for(space, strategy, estimator))
    try:
        experiment = experiment_create(user=member, name="matrix", spec=spec, enqueue=False)
    except SpecError as exc:
        parts = {"space": space, "strategy": strategy, "estimator": estimator, "dataset": dataset, "kind": kind}
        named = names_conflict(exc.message, parts)
        # Two sides of the conflict ("the darts strategy ... not the mlp space"); space and strategy may share a name.
        assert len(named) >= 2, f"refused without naming the conflict ({exc.field}: {exc.message})"
        assert not Experiment.objects.exists()
        return
    status = experiment_run_inline(experiment.pk, "matrix")
    experiment.refresh_from_db()
    assert status == "succeeded", f"accepted at submission, then {status}: {experiment.error}"
    assert experiment.trials.filter(status=DONE).count() >= 1


# Conflicts of options rather than of components, found by the matrix and once refused only by the worker.
OPTION_CONFLICTS = [
    ("nb201-cifar10", "nb201", "random", "benchmark", {"space": {"channels": 4}}, "space.channels", "channels=16"),
    ("digits", "darts", "darts", "train", {"strategy": {"layers": 2}}, "strategy.layers", "only reduction cells"),
    ("digits", "mlp", "random", "low_fidelity", {"estimator": {"width_multiplier": 0.5}},
     "estimator.width_multiplier", "not of the mlp space"),
    ("digits", "chain_cnn", "darts", "train", {}, "strategy", "not the chain_cnn space"),
    ("nb201-cifar10", "chain_cnn", "random", "benchmark", {}, "estimator", "not the chain_cnn space"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("dataset, space, strategy, estimator, options, field, words", OPTION_CONFLICTS,
                         ids=[c[5] for c in OPTION_CONFLICTS])
def test_an_option_conflict_is_refused_on_the_option_that_causes_it(dataset, space, strategy, estimator, options,
                                                                   field, words, member):
    spec = ExperimentSpec(dataset, space, strategy, estimator, budget=1, epochs=1, seed=0, options=options)
    with pytest.raises(SpecError) as refused:
        experiment_create(user=member, name="conflict", spec=spec, enqueue=False)
    assert refused.value.field == field and words in refused.value.message
    assert not Experiment.objects.exists()


@pytest.mark.django_db
def test_a_trial_trained_to_chance_level_is_flagged_as_diverged_on_its_page(alice, alice_client, settings, tmp_path):
    from django.urls import reverse

    settings.NAS_ARTIFACTS_DIR = str(tmp_path)
    # A learning rate of 10 with a weight decay that pulls every weight to 0 each step: a constant output.
    options = {"space": SMALLEST["space"]["chain_cnn"], "estimator": {"lr": 10.0, "weight_decay": 0.1, "grad_clip": 0.0}}
    spec = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=1, epochs=2, seed=0, top_k=1,
                          options=options)
    experiment = experiment_create(user=alice, name="chance", spec=spec, enqueue=False)
    assert experiment_run_inline(experiment.pk, "test") == "succeeded"
    trial = experiment.trials.get()
    assert trial.val_acc <= 0.1 + 0.02 and trial.fidelity["chance_level"] is True
    page = alice_client.get(reverse("trial_detail", args=[experiment.pk, trial.number])).content.decode()
    assert 'id="diverged"' in page and "at chance level" in page
