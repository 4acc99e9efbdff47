"""The Django admin: experiments added or edited there are validated like the form's, and what workers wrote
(status, results, trials, search epochs, calibrations) cannot be edited by hand."""
import html
import json

import pytest
from django.urls import reverse

from nasjobs.search import ExperimentSpec, TrialRecord
from webapp.experiments import services
from webapp.experiments.models import Experiment, ExperimentEvent, Trial

pytestmark = pytest.mark.django_db
INLINE = {"trials-TOTAL_FORMS": "0", "trials-INITIAL_FORMS": "0", "trials-MIN_NUM_FORMS": "0",
          "trials-MAX_NUM_FORMS": "1000"}


def fields(vision, **changes):
    data = {"name": "from the admin", "team": str(vision.pk), "dataset": "digits", "space": "chain_cnn",
            "strategy": "random", "estimator": "train", "budget": "3", "epochs": "1", "seed": "0", "top_k": "1",
            "patience": "0", "max_seconds": "0", "parallelism": "1", "failure_policy": "worst", "max_failures": "3",
            "options": "{}", **INLINE}
    return {**data, **changes}


@pytest.mark.parametrize("changes, message", [
    ({"space": "nope"}, "unknown search space 'nope'; choose one of"),
    ({"budget": "0"}, "must be an integer from 1 to 100000"),
    ({"options": json.dumps({"space": {"max_layers": 0}})}, "must be at least 1"),
    ({"dataset": "nb201-cifar10"}, "builds networks for image or signal data"),
])
def test_adding_an_invalid_experiment_shows_the_engines_message_and_creates_nothing(alice_client, vision, changes,
                                                                                    message):
    response = alice_client.post(reverse("admin:experiments_experiment_add"), fields(vision, **changes))
    assert response.status_code == 200 and message in html.unescape(response.content.decode())
    assert not Experiment.objects.exists()


def test_adding_a_valid_experiment_goes_through_the_service(alice_client, alice, vision,
                                                            django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as queued:
        response = alice_client.post(reverse("admin:experiments_experiment_add"), fields(vision))
    assert response.status_code == 302
    experiment = Experiment.objects.get()
    assert experiment.status == "queued" and experiment.cost == 3 and experiment.created_by == alice
    assert experiment.options["space"]["max_layers"] == 4  # normalised, defaults filled in
    assert list(ExperimentEvent.objects.values_list("action", flat=True)) == ["created"]
    assert len(queued) >= 1  # queued for a worker once committed


def test_a_started_experiments_settings_status_and_results_cannot_be_edited(alice_client, alice, vision):
    spec = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=3, epochs=1, seed=0)
    e = services.experiment_create(user=alice, name="started", spec=spec, enqueue=False)
    assert services.experiment_claim(e.pk, "w")
    services.trial_record(e.pk, "w", TrialRecord(0, "c16k3", "c16k3", 0.5, 10, 20, 0.1, {}, [0.5], None, "train"),
                          {}, [0])
    url = reverse("admin:experiments_experiment_change", args=[e.pk])
    page = alice_client.get(url).content.decode()
    assert 'name="budget"' not in page and 'name="status"' not in page and 'name="space"' not in page
    alice_client.post(url, {"name": "renamed", "budget": "99", "status": "succeeded", "best_val_acc": "1",
                            **{**INLINE, "trials-TOTAL_FORMS": "1", "trials-INITIAL_FORMS": "1"},
                            "trials-0-id": str(Trial.objects.get().pk), "trials-0-experiment": str(e.pk)})
    e.refresh_from_db()
    assert e.name == "renamed" and e.budget == 3 and e.status == "running" and e.best_val_acc == 0.5
    trial = Trial.objects.get()
    assert alice_client.post(reverse("admin:experiments_trial_change", args=[trial.pk]),
                             {"val_acc": "0.99"}).status_code == 403
    assert alice_client.get(reverse("admin:experiments_trial_add")).status_code == 403
    trial.refresh_from_db()
    assert trial.val_acc == 0.5


def test_a_row_naming_components_that_no_longer_exist_still_has_its_pages(alice_client, alice):
    """A plug-in uninstalled, or a row written by hand: the pages show what they can, never a 500."""
    spec = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=3, epochs=1, seed=0)
    e = services.experiment_create(user=alice, name="orphan", spec=spec, enqueue=False)
    assert services.experiment_claim(e.pk, "w")
    services.trial_record(e.pk, "w", TrialRecord(0, "c16k3", "c16k3", 0.5, 10, 20, 0.1, {}, [0.5], None, "train"),
                          {}, [0])
    Experiment.objects.filter(pk=e.pk).update(space="gone-space", strategy="gone-strategy",
                                              estimator="gone-estimator")
    for url in (reverse("experiment_detail", args=[e.pk]), reverse("experiment_status", args=[e.pk]),
                reverse("trial_detail", args=[e.pk, 0]), reverse("experiment_list"), f"/api/experiments/{e.pk}/",
                reverse("admin:experiments_experiment_change", args=[e.pk])):
        assert alice_client.get(url).status_code == 200, url
