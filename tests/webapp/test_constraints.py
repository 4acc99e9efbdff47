"""Deployment limits through the platform: form, API and `nas submit` validation, real workers skipping proposals
over the limits, the skipped count on the page and in the JSON, and the failure when the limits exclude
(nearly) everything."""
import json

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from nasjobs import nb201_table
from tests.conftest import wait_for
from tests.webapp.test_experiment_form import VALID
from webapp.experiments import selectors, services
from webapp.experiments.models import Experiment
from webapp.experiments.runner import experiment_run_inline

TABLE = {"dataset": "nb201-cifar10", "space": "nb201", "estimator": "benchmark", "epochs": 1, "seed": 5,
         "top_k": 1}
BAD_LIMITS = [("0", "at least 1"), ("-5", "at least 1"), ("2.5", "whole number"), ("lots", "whole number")]


def table_params(arch_key: str) -> int:
    return round(float(nb201_table.load("cifar10").params_m[nb201_table.index_of()[arch_key]]) * 1e6)


def create(user, **fields) -> Experiment:
    spec = Experiment(**{"strategy": "random", **TABLE, **fields}).spec()
    return services.experiment_create(user=user, name="phone", spec=spec)


# ----------------------------------------------------------------------------------------------- submission
@pytest.mark.django_db
def test_the_form_groups_the_limits_and_blank_means_no_limit(alice_client):
    page = alice_client.get(reverse("experiment_new")).content.decode()
    group = page[page.index('id="deployment-constraints"'):]
    assert "<legend>Deployment constraints</legend>" in group
    assert 'name="max_params"' in group and 'name="max_macs"' in group
    response = alice_client.post(reverse("experiment_new"), {**VALID, "max_params": "", "max_macs": ""})
    assert response.status_code == 302
    experiment = Experiment.objects.get()
    assert experiment.max_params is None and experiment.max_macs is None and not experiment.limits.active


@pytest.mark.django_db
def test_the_form_stores_limits(alice_client):
    response = alice_client.post(reverse("experiment_new"), {**VALID, "max_params": "50000", "max_macs": "2000000"})
    assert response.status_code == 302
    experiment = Experiment.objects.get()
    assert (experiment.max_params, experiment.max_macs) == (50_000, 2_000_000)
    assert experiment.spec().limits.max_params == 50_000


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["max_params", "max_macs"])
@pytest.mark.parametrize("value, message", BAD_LIMITS)
def test_the_form_refuses_a_bad_limit_and_creates_nothing(alice_client, field, value, message):
    response = alice_client.post(reverse("experiment_new"), {**VALID, field: value})
    assert response.status_code == 200
    errors = response.context["form"].errors[field]
    assert any(m in e for e in errors for m in (message, "greater than or equal to 1", "Enter a whole number"))
    assert not Experiment.objects.exists()


@pytest.mark.django_db
def test_the_form_names_the_conflict_of_a_limit_no_architecture_meets(alice_client):
    response = alice_client.post(reverse("experiment_new"), {**VALID, "max_macs": "100"})
    assert response.status_code == 200
    [error] = response.context["form"].errors["max_macs"]
    assert "no architecture of the chain_cnn space with these options fits" in error and "1,184 MACs" in error
    assert not Experiment.objects.exists()


@pytest.fixture
def carol_api(carol):
    response = Client().post("/api/token/", {"username": "carol", "password": "carol-pass-123"})
    return Client(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")


SUBMIT = {"name": "phone", "dataset": "digits", "space": "chain_cnn", "strategy": "random", "budget": 3, "epochs": 1}


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["max_params", "max_macs"])
@pytest.mark.parametrize("value, message", [(0, "at least 1"), (-5, "at least 1"), (2.5, "valid integer"),
                                            ("lots", "valid integer"), (10, "no architecture")])
def test_the_api_refuses_a_bad_limit_per_field_and_creates_nothing(carol_api, field, value, message):
    response = carol_api.post("/api/experiments/", {**SUBMIT, field: value}, content_type="application/json")
    assert response.status_code == 400
    assert message in " ".join(response.json()[field]) or "whole number" in " ".join(response.json()[field])
    assert not Experiment.objects.exists()


@pytest.mark.django_db
def test_the_api_takes_limits_and_shows_them(carol_api):
    response = carol_api.post("/api/experiments/", {**SUBMIT, "max_params": 40_000, "max_macs": None},
                              content_type="application/json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["max_params"] == 40_000 and data["max_macs"] is None
    assert data["exploration"]["skipped_proposals"] == 0


@pytest.mark.django_db
@pytest.mark.usefixtures("demo")
@pytest.mark.parametrize("args, message", [
    (["--max-params", "0"], "max_params: must be a whole number from 1"),
    (["--max-macs", "-5"], "max_macs: must be a whole number from 1"),
    (["--max-params", "2.5"], "invalid int value: '2.5'"),
    (["--max-macs", "100"], "max_macs: no architecture of the chain_cnn space with these options fits")])
def test_nas_submit_refuses_a_bad_limit_and_creates_nothing(args, message):
    with pytest.raises(CommandError) as caught:
        call_command("nas", "submit", "--budget", "2", *args)
    assert message in str(caught.value)
    assert not Experiment.objects.exists()


# ----------------------------------------------------------------------------------------------- running
@pytest.mark.django_db
@pytest.mark.usefixtures("demo")
def test_nas_submit_with_a_limit_trains_only_networks_within_it(capsys, settings, tmp_path):
    settings.NAS_ARTIFACTS_DIR = tmp_path
    call_command("nas", "submit", "--dataset", "nb201-cifar10", "--space", "nb201", "--estimator", "benchmark",
                 "--budget", "12", "--max-params", "400000", "--inline", "--json")
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "succeeded" and data["trials_done"] == 12 and data["max_params"] == 400_000
    experiment = Experiment.objects.get(pk=data["id"])
    assert all(t.params <= 400_000 for t in experiment.trials.all())
    exploration = data["exploration"]
    assert exploration["skipped_proposals"] == experiment.skipped_proposals > 0
    assert exploration["proposals"] >= exploration["unique_architectures"] + exploration["skipped_proposals"]
    call_command("nas", "show", str(data["id"]))
    assert (f"{experiment.skipped_proposals:,} of {exploration['proposals']:,} proposals skipped: over the limits "
            "(max_params 400,000)") in capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("strategy, options", [("random", {}), ("evolution", {"population": 10, "sample_size": 3}),
                                               ("reinforce", {"batch_size": 4})])
def test_two_workers_skip_over_limit_proposals_and_spend_the_budget_on_the_rest(alice, celery_worker_factory,
                                                                              strategy, options):
    experiment = create(alice, strategy=strategy, budget=40, parallelism=2, max_params=400_000,
                        options={"strategy": options})
    workers = [celery_worker_factory(), celery_worker_factory()]
    wait_for(lambda: Experiment.objects.get(pk=experiment.pk).status not in Experiment.ACTIVE, 180,
             "the experiment", lambda: "\n---\n".join(w.log() for w in workers))
    experiment.refresh_from_db()
    assert experiment.status == "succeeded", experiment.error
    trials = list(experiment.trials.all())
    assert experiment.trials_done == 40 == sum(len(t.evaluations) for t in trials)
    assert all(t.status == "done" and t.params <= 400_000 and t.params == table_params(t.arch_key) for t in trials)
    assert experiment.skipped_proposals > 0
    exploration = selectors.experiment_exploration(experiment)
    assert exploration["skipped_proposals"] == experiment.skipped_proposals
    assert exploration["proposals"] == experiment.proposals >= len(trials) + experiment.skipped_proposals
    if strategy == "evolution":
        population = experiment.strategy_state["population"]
        assert population and all(table_params(key) <= 400_000 for key, _ in population)


@pytest.mark.django_db
def test_limits_that_exclude_nearly_everything_fail_the_experiment_saying_why(alice, alice_client, settings,
                                                                              tmp_path):
    settings.NAS_ARTIFACTS_DIR, settings.NAS_MAX_SKIPPED_IN_A_ROW = tmp_path, 40
    # Convolutions only: one cell of the 64 has at most 241,306 parameters; the budget of 5 cannot be spent.
    experiment = create(alice, budget=5, max_params=241_306,
                        options={"space": {"ops": ["nor_conv_3x3", "nor_conv_1x1"]}})
    assert experiment_run_inline(experiment.pk, "inline") == "failed"
    experiment.refresh_from_db()
    assert experiment.error.startswith("40 proposals in a row were over the deployment limits (max_params 241,306): "
                                       "the limits exclude (nearly) every architecture of the nb201 space")
    assert "the smallest network proposed over them had 456,346 parameters" in experiment.error
    assert experiment.trials_done <= 1 and experiment.skipped_proposals >= 40
    assert experiment.events.filter(action="failed").exists()
    page = alice_client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    assert (f'<span id="skipped">· {experiment.skipped_proposals} proposals skipped: over the parameter/MAC limits '
            '(max_params 241,306)</span>') in page
    data = alice_client.get(reverse("experiment_status", args=[experiment.pk])).json()
    assert data["exploration"]["skipped_proposals"] == experiment.skipped_proposals
    assert data["exploration"]["proposals"] >= experiment.skipped_proposals + experiment.trials.count()
