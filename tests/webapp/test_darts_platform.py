"""DARTS on the platform: `nas submit` runs one search, each epoch is a SearchEpoch row, the page shows the alphas
and the derived cell per epoch, and a worker killed mid-search resumes from its checkpoint to the genotype of an
uninterrupted run."""
import json
import tempfile

import pytest
import torch
from django.core.management import call_command
from django.urls import reverse

from nasjobs.artifacts import ArtifactStore
from webapp.experiments.runner import experiment_run_inline
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner, validate_spec
from tests.conftest import wait_for
from webapp.experiments import services
from webapp.experiments.models import Experiment, SearchEpoch, Trial

TINY = ["--option", "space.channels=4", "--option", "space.cells=1", "--option", "strategy.init_channels=4",
        "--option", "strategy.layers=1", "--option", "strategy.final_epochs=2"]


def tiny_spec(epochs: int, seed: int = 0) -> ExperimentSpec:
    return validate_spec(ExperimentSpec(
        "digits", "nb201", "darts", "train", budget=1, epochs=epochs, seed=seed, top_k=1,
        options={"space": {"channels": 4, "cells": 1},
                 "strategy": {"init_channels": 4, "layers": 1, "final_epochs": 2}}))


@pytest.mark.django_db
def test_nas_submit_runs_a_two_epoch_search_and_reports_the_derived_cell(capsys, settings, tmp_path, demo):
    settings.NAS_ARTIFACTS_DIR = str(tmp_path)
    call_command("nas", "submit", "--space", "nb201", "--strategy", "darts", "--dataset", "digits", "--epochs", "2",
                 *TINY, "--inline", "--json")
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "succeeded" and out["budget"] == 1 and out["trials_done"] == 1
    epochs = out["search_epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert out["best"]["arch"] == epochs[-1]["genotype"]  # the architecture derived after the last epoch
    assert 0 <= out["best"]["val_acc"] <= 1 and 0 <= out["best"]["test_acc"] <= 1
    trial = Trial.objects.get(experiment_id=out["id"])
    assert trial.fidelity["supernet_val_acc"] == epochs[-1]["val_acc"] and trial.fidelity["epochs"] == 2
    rows = SearchEpoch.objects.filter(experiment_id=out["id"]).order_by("epoch")
    assert [r.epoch for r in rows] == [1, 2]
    assert len(rows[0].alphas["cell"]) == 6 and all(abs(sum(p) - 1) < 1e-5 for p in rows[1].alphas["cell"])


@pytest.mark.django_db
def test_the_page_shows_the_search_epochs_and_draws_each_derived_cell(alice_client, alice, settings, tmp_path):
    settings.NAS_ARTIFACTS_DIR = str(tmp_path)
    experiment = services.experiment_create(user=alice, name="darts page", spec=tiny_spec(epochs=2), enqueue=False)
    assert experiment_run_inline(experiment.pk, "test") == "succeeded"
    page = alice_client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    assert 'id="search-epochs"' in page and 'id="alpha-charts"' in page and "Param-free ops" in page
    svg = alice_client.get(reverse("search_epoch_diagram", args=[experiment.pk, 2]))
    assert svg.status_code == 200 and svg["Content-Type"] == "image/svg+xml" and b"<svg" in svg.content
    assert alice_client.get(reverse("search_epoch_diagram", args=[experiment.pk, 3])).status_code == 404
    data = alice_client.get(reverse("experiment_status", args=[experiment.pk])).json()
    assert [e["epoch"] for e in data["search_epochs"]] == [1, 2]
    assert 0 <= data["search_epochs"][1]["param_free_fraction"] <= 1


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_resumes_the_search_from_its_last_epoch(alice, celery_worker_factory):
    spec = tiny_spec(epochs=4, seed=2)
    experiment = services.experiment_create(user=alice, name="darts killed", spec=spec)
    first = celery_worker_factory()
    wait_for(lambda: SearchEpoch.objects.filter(experiment=experiment).exists(), 180, "a search epoch", first.log)
    first.kill()
    done_at_kill = SearchEpoch.objects.filter(experiment=experiment).count()
    assert done_at_kill < 4 and Experiment.objects.get(pk=experiment.pk).status == "running"

    second = celery_worker_factory()
    wait_for(lambda: Experiment.objects.get(pk=experiment.pk).status not in Experiment.ACTIVE, 240,
             "the resumed search to finish", second.log)
    experiment.refresh_from_db()
    assert experiment.status == "succeeded", experiment.error
    assert list(SearchEpoch.objects.filter(experiment=experiment).order_by("epoch")
                .values_list("epoch", flat=True)) == list(range(1, 5))

    reference = MemoryStore()
    with tempfile.TemporaryDirectory() as tmp:
        SearchRunner(spec, reference, ArtifactStore(tmp, 0), torch.device("cpu")).run()
    assert Trial.objects.get(experiment=experiment).arch_key == reference.trials[0].arch_key
    rows = {r.epoch: r for r in SearchEpoch.objects.filter(experiment=experiment)}
    for epoch, record in reference.epochs.items():
        assert rows[epoch].genotype == record["genotype"]
        assert rows[epoch].alphas == json.loads(json.dumps(record["alphas"]))  # bit-exact after the resume


@pytest.mark.django_db
def test_a_darts_search_progresses_with_its_epochs_before_its_single_trial(alice_client, alice):
    experiment = services.experiment_create(user=alice, name="darts progress", spec=tiny_spec(epochs=4),
                                            enqueue=False)
    assert experiment.progress_percent == 0
    for epoch in (1, 2):
        SearchEpoch.objects.create(experiment=experiment, epoch=epoch, train_loss=1, train_acc=0.5, val_loss=1,
                                   val_acc=0.5, alphas={}, genotype="", param_free_fraction=0.0)
    assert experiment.progress_percent == 50
    page = alice_client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    assert 'style="width: 50%"' in page and "search epochs done / epochs" in page
    assert alice_client.get(reverse("experiment_status", args=[experiment.pk])).json()["progress_percent"] == 50


NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


def epoch_with(experiment, epoch: int, cell: list[list[float]]) -> SearchEpoch:
    return SearchEpoch.objects.create(experiment=experiment, epoch=epoch, train_loss=1, train_acc=0.5, val_loss=1,
                                      val_acc=0.5, alphas={"cell": cell}, ops=NB201_OPS, genotype="",
                                      param_free_fraction=0.0)


@pytest.mark.django_db
def test_a_search_whose_weights_stayed_near_uniform_says_its_derived_cell_is_not_yet_informative(alice_client,
                                                                                                   alice):
    from webapp.experiments.selectors import experiment_weight_spread

    experiment = services.experiment_create(user=alice, name="darts uniform", spec=tiny_spec(epochs=4),
                                            enqueue=False)
    assert experiment_weight_spread(experiment) is None  # no epoch yet: nothing to judge
    epoch_with(experiment, 1, [[0.3, 0.175, 0.175, 0.175, 0.175]] * 6)  # peaked once, then back to uniform
    epoch_with(experiment, 2, [[0.21, 0.2, 0.2, 0.2, 0.19]] * 6)
    spread = experiment_weight_spread(experiment)  # the last epoch's weights are what the cell is derived from
    assert spread["near_uniform"] and spread["epoch"] == 2 and spread["largest"] == 0.21 and spread["uniform"] == 0.2
    page = alice_client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    assert 'id="near-uniform"' in page and 'id="near-uniform" hidden' not in page.replace("\n", " ")
    assert ("The operation weights are still near uniform (largest weight 0.210 vs uniform 0.200): the derived "
            "cell is not yet informative; search more epochs.") in page
    api = alice_client.get(f"/api/experiments/{experiment.pk}/").json()
    assert api["weight_spread"]["near_uniform"] is True and "not yet informative" in api["weight_spread"]["note"]


@pytest.mark.django_db
def test_a_search_whose_weights_chose_shows_no_near_uniform_note(alice_client, alice):
    experiment = services.experiment_create(user=alice, name="darts peaked", spec=tiny_spec(epochs=4),
                                            enqueue=False)
    epoch_with(experiment, 1, [[0.21, 0.2, 0.2, 0.2, 0.19]] * 6)
    epoch_with(experiment, 2, [[0.6, 0.1, 0.1, 0.1, 0.1]] + [[0.2] * 5] * 5)
    page = alice_client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    note = page[page.index('id="near-uniform"'):page.index("</p>", page.index('id="near-uniform"'))]
    assert 'id="darts"' in page and " hidden>" in note and "not yet informative" not in page
    api = alice_client.get(f"/api/experiments/{experiment.pk}/").json()
    assert api["weight_spread"]["near_uniform"] is False and api["weight_spread"]["note"] is None


@pytest.mark.django_db
def test_the_poll_brings_the_near_uniform_note_with_each_new_search_epoch(alice_client, alice):
    """A page open while DARTS searches shows the note once the latest epoch's weights are near uniform, and drops
    it once they have chosen: the poll sends `weight_spread` with new epochs (and only then, so an unchanged poll
    stays small)."""
    experiment = services.experiment_create(user=alice, name="darts live", spec=tiny_spec(epochs=4), enqueue=False)
    status = reverse("experiment_status", args=[experiment.pk])
    assert "weight_spread" not in alice_client.get(status, {"since": 0, "epochs": 0}).json()
    epoch_with(experiment, 1, [[0.21, 0.2, 0.2, 0.2, 0.19]] * 6)
    first = alice_client.get(status, {"since": 0, "epochs": 0}).json()
    assert [e["epoch"] for e in first["search_epochs"]] == [1] and first["weight_spread"]["near_uniform"] is True
    assert "not yet informative" in first["weight_spread"]["note"]
    assert "weight_spread" not in alice_client.get(status, {"since": 0, "epochs": 1}).json()  # nothing new
    epoch_with(experiment, 2, [[0.6, 0.1, 0.1, 0.1, 0.1]] + [[0.2] * 5] * 5)
    second = alice_client.get(status, {"since": 0, "epochs": 1}).json()
    assert [e["epoch"] for e in second["search_epochs"]] == [2]
    assert second["weight_spread"]["near_uniform"] is False and second["weight_spread"]["note"] is None
