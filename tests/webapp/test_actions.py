"""Clone, extend, retrain and compare: services, pages and API routes, their refusals and their access rules."""
import pytest
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from nasjobs.search import ExperimentSpec, SpecError, TrialRecord
from tests.webapp.test_api import token_client
from webapp.experiments import selectors, services
from webapp.experiments.models import Experiment, ExperimentEvent, Trial
from webapp.teams.models import Team

pytestmark = pytest.mark.django_db
SPEC = ExperimentSpec("digits", "chain_cnn", "evolution", "train", budget=3, epochs=2, seed=5, patience=4,
                      parallelism=2, options={"space": {"max_layers": 2, "filters": [16, 32]},
                                              "strategy": {"population": 6}, "estimator": {"lr": 0.05}})


def finished(user, name="search", spec=SPEC, accs=(0.5, 0.9, 0.7), status="succeeded", **fields) -> Experiment:
    """An experiment whose search ended, its trials recorded as a worker records them."""
    experiment = services.experiment_create(user=user, name=name, spec=spec, enqueue=False)
    assert services.experiment_claim(experiment.pk, "w")
    for i, acc in enumerate(accs):
        key = f"c{16 * (i + 1)}k3"
        services.trial_record(experiment.pk, "w", TrialRecord(i, key, key, acc, 100 + i, 1000, 0.5, {"epochs": 1},
                                                              [acc], None, spec.estimator), {"s": i}, [i])
    Experiment.objects.filter(pk=experiment.pk).update(status=status, stop_reason="budget", **fields)
    experiment.refresh_from_db()
    return experiment


def snapshot(experiment: Experiment) -> tuple:
    row = Experiment.objects.get(pk=experiment.pk)
    return (row.status, row.budget, row.cost, row.patience, row.max_seconds, row.plan_version,
            Trial.everything.filter(experiment=row).count(), row.events.count())


# ---------------------------------------------------------------------------------------------------- clone
def test_clone_prefills_every_field_and_option_and_submits_the_same_spec(alice_client, alice):
    original = finished(alice, "chains")
    response = alice_client.get(reverse("experiment_new") + f"?clone={original.pk}")
    assert response.status_code == 200
    form = response.context["form"]
    page = response.content.decode()
    assert 'value="copy of chains"' in page
    assert form["strategy"].value() == "evolution" and form["epochs"].value() == 2 and form["seed"].value() == 5
    assert form["patience"].value() == 4 and form["parallelism"].value() == 2 and form["team"].value() == "vision"
    assert form["opt-space-chain_cnn-max_layers"].value() == 2
    assert form["opt-space-chain_cnn-filters"].value() == ["16", "32"]
    assert form["opt-strategy-evolution-population"].value() == 6
    assert form["opt-estimator-train-lr"].value() == 0.05

    data = {name: form[name].value() for name in form.fields}
    data = {k: v for k, v in data.items() if v is not None and v is not False}
    response = alice_client.post(reverse("experiment_new"), data)
    assert response.status_code == 302, response.context["form"].errors
    copy = Experiment.objects.exclude(pk=original.pk).get()
    assert copy.name == "copy of chains" and copy.spec() == original.spec()


def test_cloning_another_teams_or_a_missing_experiment_is_a_404(client, bob, alice):
    theirs = finished(alice)
    client.force_login(bob)
    for clone in (theirs.pk, 99999, "abc"):
        assert client.get(reverse("experiment_new") + f"?clone={clone}").status_code == 404


def test_the_detail_page_links_to_a_clone(alice_client, alice):
    experiment = finished(alice)
    page = alice_client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    assert f'href="/experiments/new/?clone={experiment.pk}"' in page


# ---------------------------------------------------------------------------------------------------- extend
def test_extend_raises_the_budget_and_queues_the_search_again(alice, django_capture_on_commit_callbacks):
    experiment = finished(alice, test_acc=0.8)
    cost, version = experiment.cost, experiment.plan_version
    with django_capture_on_commit_callbacks() as callbacks:
        assert services.experiment_extend(experiment, alice, 4)
    assert len(callbacks) == 1  # queued once it commits
    experiment.refresh_from_db()
    assert experiment.status == "queued" and experiment.budget == 7 and experiment.cost == cost + 4 * 2
    assert experiment.stop_reason == "" and experiment.test_acc is None and experiment.finished_at is None
    assert experiment.plan_version == version + 1, "a cached planner with the old budget is stale"
    event = experiment.events.get(action=ExperimentEvent.Action.EXTENDED)
    assert event.actor == alice and "by 4 trials to a budget of 7" in event.detail


@pytest.mark.parametrize("trials", [0, -1, None, "3", True, 10 ** 6])
def test_a_bad_count_is_refused_and_changes_nothing(alice, trials):
    experiment = finished(alice)
    before = snapshot(experiment)
    with pytest.raises(SpecError) as exc:
        services.experiment_extend(experiment, alice, trials)
    assert exc.value.field == "trials"
    assert snapshot(experiment) == before


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled", "pending_review", "rejected"])
def test_only_a_succeeded_search_is_extended(alice, status):
    experiment = finished(alice, status=status)
    before = snapshot(experiment)
    assert services.experiment_extend(experiment, alice, 2) is False
    assert snapshot(experiment) == before


def test_a_member_who_is_not_the_owner_may_not_extend(alice, carol):
    experiment = finished(alice)
    before = snapshot(experiment)
    with pytest.raises(PermissionDenied):
        services.experiment_extend(experiment, carol, 2)
    assert snapshot(experiment) == before


def test_an_extension_over_the_review_threshold_waits_for_a_reviewer(alice, carol, vision):
    Team.objects.filter(pk=vision.pk).update(review_threshold=10)
    experiment = finished(carol)
    assert services.experiment_extend(experiment, carol, 6)  # 6 trials x 2 epochs = 12 > 10
    experiment.refresh_from_db()
    assert experiment.status == "pending_review" and experiment.admitted_at is None
    assert experiment.review_reason.startswith("its extension by 6 trials costs 12 trial-epochs")
    assert services.experiment_approve(experiment, alice)
    experiment.refresh_from_db()
    assert experiment.status == "queued" and experiment.budget == 9


def test_an_extension_past_the_quota_waits_for_a_reviewer(carol, vision):
    experiment = finished(carol)
    Team.objects.filter(pk=vision.pk).update(monthly_quota=experiment.cost + 5)
    assert services.experiment_extend(experiment, carol, 3)  # 6 more trial-epochs: one past the quota
    experiment.refresh_from_db()
    assert experiment.status == "pending_review" and "this month" in experiment.review_reason


def test_extending_a_search_stopped_by_its_time_limit_gives_it_another_window(alice):
    experiment = finished(alice, max_seconds=60, seconds_before=61.5)
    Experiment.objects.filter(pk=experiment.pk).update(stop_reason="time_limit")
    assert services.experiment_extend(experiment, alice, 2)
    experiment.refresh_from_db()
    assert experiment.max_seconds == 62 + 60 and experiment.patience == 4  # patience had not run out
    assert "time limit raised to 122 s" in experiment.events.get(action="extended").detail


def test_extending_lifts_a_patience_that_has_run_out(alice):
    experiment = finished(alice, accs=(0.9, 0.5, 0.6, 0.4, 0.3), spec=ExperimentSpec(
        "digits", "chain_cnn", "random", "train", budget=9, epochs=1, seed=0, patience=4))
    Experiment.objects.filter(pk=experiment.pk).update(stop_reason="patience")
    assert services.experiment_extend(experiment, alice, 3)
    experiment.refresh_from_db()
    assert experiment.patience == 0 and experiment.budget == 8  # 5 evaluated + 3


def test_a_search_with_no_architecture_left_is_not_extended(alice):
    experiment = finished(alice)
    Experiment.objects.filter(pk=experiment.pk).update(stop_reason="exhausted")
    with pytest.raises(SpecError, match="no new architecture"):
        services.experiment_extend(experiment, alice, 2)


def test_the_extend_button_extends_and_a_bad_count_says_why(alice_client, alice):
    experiment = finished(alice)
    page = alice_client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    assert 'id="extend-form"' in page
    url = reverse("experiment_extend", args=[experiment.pk])
    response = alice_client.post(url, {"trials": "0"}, follow=True)
    assert "Extend by at least 1 trial." in response.content.decode()
    assert Experiment.objects.get(pk=experiment.pk).budget == 3
    response = alice_client.post(url, {"trials": "2"}, follow=True)
    assert "Experiment extended by 2 trials" in response.content.decode()
    assert Experiment.objects.get(pk=experiment.pk).budget == 5
    assert alice_client.get(url).status_code == 405


def test_extend_and_retrain_of_another_teams_experiment_are_404(client, alice, bob):
    experiment = finished(alice)
    client.force_login(bob)
    before = snapshot(experiment)
    assert client.post(reverse("experiment_extend", args=[experiment.pk]), {"trials": 2}).status_code == 404
    assert client.post(reverse("experiment_retrain", args=[experiment.pk]), {"epochs": 2}).status_code == 404
    assert client.get(reverse("retrain_detail", args=[experiment.pk, 0])).status_code == 404
    assert snapshot(experiment) == before


# ---------------------------------------------------------------------------------------------------- retrain
def test_a_retraining_is_a_trial_of_its_own_kind_outside_the_search(alice, alice_client,
                                                                      django_capture_on_commit_callbacks):
    experiment = finished(alice)
    cost = experiment.cost
    with django_capture_on_commit_callbacks() as callbacks:
        retrain = services.experiment_retrain(experiment, alice, 6)
    assert len(callbacks) == 1
    assert retrain.is_retrain and retrain.number == 0 and retrain.source_number == 1 and retrain.status == "pending"
    assert retrain.arch_key == "c32k3" and retrain.fidelity == {"epochs": 6}
    experiment.refresh_from_db()
    assert experiment.trials_done == 3 and experiment.trials.count() == 3 and experiment.cost == cost + 6
    assert [t.number for t in selectors.experiment_leaderboard(experiment)] == [1, 2, 0]
    assert experiment.events.filter(action="retrain", detail="trial 1 from scratch for 6 epochs").exists()
    # Done as a worker records it: shown beside the trials and on a page of its own, never ranked.
    Trial.everything.filter(pk=retrain.pk).update(status="done", val_acc=0.95, test_acc=0.93, curve=[0.9, 0.95],
                                                  train_seconds=3.0)
    page = alice_client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    table = page[page.index('id="retrains"'):page.index("</table>", page.index('id="retrains"'))]
    board = page[page.index('id="leaderboard"'):page.index("</table>", page.index('id="leaderboard"'))]
    assert "95.00%" in table and "93.00%" in table and board.count("<tr>") == 4 and "95.00%" not in board
    trial_page = alice_client.get(reverse("retrain_detail", args=[experiment.pk, 0])).content.decode()
    assert "Retraining 0" in trial_page and "from scratch for 6 epochs" in trial_page and "93.00%" in trial_page
    assert "Download as a PyTorch model" not in trial_page
    data = selectors.experiment_summary(experiment, leaderboard=None)  # the JSON of the API and `nas show`
    assert data["retrains"][0]["test_acc"] == 0.93 and len(data["leaderboard"]) == 3
    # A second one counts its own numbers.
    assert services.experiment_retrain(experiment, alice, 2).number == 1


@pytest.mark.parametrize("epochs", [0, 10_001, None, "3"])
def test_retrain_epochs_out_of_range_are_refused(alice, epochs):
    experiment = finished(alice)
    before = snapshot(experiment)
    with pytest.raises(SpecError, match="from 1 to 10000"):
        services.experiment_retrain(experiment, alice, epochs)
    assert snapshot(experiment) == before


@pytest.mark.parametrize("status", ["queued", "running", "pending_review"])
def test_a_running_search_is_not_retrained(alice, status):
    experiment = finished(alice, status=status)
    before = snapshot(experiment)
    with pytest.raises(SpecError, match="retrain once its search has ended"):
        services.experiment_retrain(experiment, alice, 2)
    assert snapshot(experiment) == before


def test_a_search_without_a_best_trial_or_on_a_table_is_not_retrained(alice):
    empty = finished(alice, accs=())
    with pytest.raises(SpecError, match="no best trial yet"):
        services.experiment_retrain(empty, alice, 2)
    table = finished(alice, spec=ExperimentSpec("nb201-cifar10", "nb201", "random", "benchmark", budget=3, epochs=1,
                                                seed=0), accs=())
    Experiment.objects.filter(pk=table.pk).update(best_trial_number=0)
    Trial.objects.create(experiment=table, number=0, arch_key="k", arch_display="k", val_acc=0.9, params=1, flops=1,
                         train_seconds=0, estimator="benchmark")
    table.refresh_from_db()
    before = snapshot(table)
    with pytest.raises(SpecError, match="NAS-Bench-201 table"):
        services.experiment_retrain(table, alice, 2)
    assert snapshot(table) == before


def test_one_retraining_at_a_time_and_cancel_stops_it(alice):
    experiment = finished(alice)
    retrain = services.experiment_retrain(experiment, alice, 2)
    with pytest.raises(SpecError, match="already under way"):
        services.experiment_retrain(experiment, alice, 2)
    with pytest.raises(SpecError, match="retraining is under way"):
        services.experiment_extend(experiment, alice, 2)
    assert services.experiment_cancel(experiment, alice)
    retrain.refresh_from_db()
    assert retrain.status == "failed" and retrain.error == "cancelled by alice"
    assert Experiment.objects.get(pk=experiment.pk).status == "succeeded"
    assert services.experiment_cancel(experiment, alice) is False


def test_a_member_who_is_not_the_owner_may_not_retrain(alice, carol):
    experiment = finished(alice)
    with pytest.raises(PermissionDenied):
        services.experiment_retrain(experiment, carol, 2)
    assert not Trial.everything.filter(kind="retrain").exists()


def test_the_retrain_button_queues_one_and_a_refusal_says_why(alice_client, alice):
    experiment = finished(alice, status="running")
    url = reverse("experiment_retrain", args=[experiment.pk])
    response = alice_client.post(url, {"epochs": "4"}, follow=True)
    assert "retrain once its search has ended" in response.content.decode()
    Experiment.objects.filter(pk=experiment.pk).update(status="succeeded")
    page = alice_client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    assert 'id="retrain-form"' in page and 'value="4"' in page  # default: twice the search's epochs
    response = alice_client.post(url, {"epochs": "4"}, follow=True)
    assert "Retraining queued" in response.content.decode()
    assert Trial.everything.get(kind="retrain").fidelity == {"epochs": 4}


def retrains_table(client, experiment) -> str:
    page = client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    return page[page.index('id="retrains"'):page.index("</table>", page.index('id="retrains"'))]


def test_a_retraining_at_chance_level_is_marked_in_the_list_of_retrainings(alice, alice_client):
    experiment = finished(alice)
    retrain = services.experiment_retrain(experiment, alice, 2)
    Trial.everything.filter(pk=retrain.pk).update(status="done", val_acc=0.99)
    assert "99.00%" in retrains_table(alice_client, experiment)
    assert "chance-level" not in retrains_table(alice_client, experiment)
    # Trained to no better than guessing the most common class (the train estimator's mark in its fidelity):
    # marked beside its figure, as a trial of the search is in the leaderboard.
    assert selectors.experiment_summary(experiment)["retrains"][0]["chance_level"] is False
    Trial.everything.filter(pk=retrain.pk).update(fidelity={"epochs": 2, "chance_level": True}, val_acc=0.1)
    assert 'class="tag chance-level"' in retrains_table(alice_client, experiment)
    assert selectors.experiment_summary(experiment)["retrains"][0]["chance_level"] is True  # the API's and nas show's


def test_a_retraining_is_not_a_trial_of_the_search_anywhere(alice, alice_client):
    experiment = finished(alice)
    retrain = services.experiment_retrain(experiment, alice, 2)
    Trial.everything.filter(pk=retrain.pk).update(status="done", val_acc=0.99)
    # Its number is 0, like the search's first trial: the search's own pages keep showing that trial.
    page = alice_client.get(reverse("trial_detail", args=[experiment.pk, 0])).content.decode()
    assert "Trial 0" in page and "Retraining" not in page
    from webapp.experiments.runner import trial_records

    assert [t.number for t in trial_records(experiment.pk)] == [0, 1, 2]
    assert selectors.experiment_summary(experiment)["best"]["val_acc"] == 0.9


# ---------------------------------------------------------------------------------------------------- compare
def test_compare_shows_settings_side_by_side_curves_and_diagrams(alice_client, alice):
    a = finished(alice, "first", accs=(0.5, 0.9, 0.7))
    b = finished(alice, "second", spec=ExperimentSpec("digits", "chain_cnn", "random", "train", budget=3, epochs=2,
                                                       seed=5, options={"space": {"max_layers": 3}}), accs=(0.6, 0.4))
    response = alice_client.get(reverse("experiment_compare") + f"?ids={a.pk},{b.pk}")
    assert response.status_code == 200
    rows = {r["name"]: r for r in response.context["rows"]}
    assert rows["strategy"]["differs"] and rows["space.max_layers"]["differs"] and rows["strategy.population"]["differs"]
    assert not rows["dataset"]["differs"] and not rows["epochs"]["differs"] and not rows["seed"]["differs"]
    assert rows["strategy.population"]["values"] == [6, "–"]
    chart = response.context["chart"]
    assert chart[0]["curve"] == [[0, 0.5], [1, 0.9], [2, 0.9]] and chart[1]["curve"] == [[0, 0.6], [1, 0.6]]
    page = response.content.decode()
    assert page.count('class="differs"') >= 3 and "chart.umd.min.js" in page and "cdn" not in page.lower()
    assert page.count("<svg") >= 2 and "mixed-figures" not in page


def test_compare_loads_no_checkpoint_and_no_traceback(alice):
    a, b = finished(alice), finished(alice)
    for e in selectors.experiments_compared(alice, [a.pk, b.pk]):
        assert {"strategy_state", "traceback", "error"} <= e.get_deferred_fields()


def test_compare_says_when_figures_differ_in_kind(alice_client, alice):
    a = finished(alice)
    b = finished(alice, spec=ExperimentSpec("digits", "chain_cnn", "random", "zero_cost", budget=3, epochs=1, seed=0),
                 accs=(12.5, 30.0))
    page = alice_client.get(reverse("experiment_compare") + f"?ids={a.pk}&ids={b.pk}").content.decode()
    assert 'id="mixed-figures"' in page and "validation accuracy" in page and "score" in page


@pytest.mark.parametrize("ids, message", [("", "2 to 5 different experiments (0 given)"),
                                          ("{a}", "(1 given)"), ("{a},{a}", "(1 given)"),
                                          ("1,2,3,4,5,6", "(6 given)"), ("{a},x", "separated by commas"),
                                          ("{a};{b}", "separated by commas")])
def test_compare_with_bad_ids_is_a_400_saying_why(alice_client, alice, ids, message):
    a, b = finished(alice), finished(alice)
    response = alice_client.get(reverse("experiment_compare") + "?ids=" + ids.format(a=a.pk, b=b.pk))
    assert response.status_code == 400 and message in response.content.decode()


def test_compare_with_an_experiment_the_user_cannot_see_is_a_404(client, alice, bob):
    mine, theirs = finished(bob), finished(alice)
    client.force_login(bob)
    assert client.get(reverse("experiment_compare") + f"?ids={mine.pk},{theirs.pk}").status_code == 404
    assert client.get(reverse("experiment_compare") + f"?ids={mine.pk},99999").status_code == 404


def test_the_list_has_checkboxes_that_submit_to_compare(alice_client, alice):
    a = finished(alice)
    page = alice_client.get(reverse("experiment_list")).content.decode()
    assert f'name="ids" value="{a.pk}" form="compare-form"' in page
    assert 'action="/compare/"' in page and "Compare selected" in page


# ---------------------------------------------------------------------------------------------------- API, command
def test_extend_and_retrain_through_the_api(carol, alice):
    api = token_client("carol", "carol-pass-123")
    experiment = finished(carol)
    url = f"/api/experiments/{experiment.pk}/"
    assert api.post(url + "extend/", {"trials": 0}, content_type="application/json").json() == {
        "trials": ["extend by at least 1 trial"]}
    response = api.post(url + "extend/", {"trials": 2}, content_type="application/json")
    assert response.status_code == 200 and response.json()["budget"] == 5 and response.json()["status"] == "queued"
    assert api.post(url + "extend/", {"trials": 2}, content_type="application/json").status_code == 409
    response = api.post(url + "retrain/", {"epochs": 3}, content_type="application/json")
    assert response.status_code == 400 and "retrain once its search has ended" in response.json()["epochs"][0]
    Experiment.objects.filter(pk=experiment.pk).update(status="succeeded")
    response = api.post(url + "retrain/", {"epochs": 3}, content_type="application/json")
    assert response.status_code == 201 and response.json()["epochs"] == 3 and response.json()["of_trial"] == 1
    assert api.get(url).json()["retrains"][0]["status"] == "pending"
    assert api.get(url + "trials/").json()["count"] == 3
    theirs = finished(alice, "admins only")
    assert api.post(f"/api/experiments/{theirs.pk}/extend/", {"trials": 2},
                    content_type="application/json").status_code == 403
    assert api.post("/api/experiments/99999/retrain/", {"epochs": 2},
                    content_type="application/json").status_code == 404


def test_extend_and_retrain_through_the_api_are_404_for_another_team(bob, alice):
    api = token_client("bob", "bob-pass-123")
    experiment = finished(alice)
    before = snapshot(experiment)
    for action, body in (("extend", {"trials": 2}), ("retrain", {"epochs": 2})):
        assert api.post(f"/api/experiments/{experiment.pk}/{action}/", body,
                        content_type="application/json").status_code == 404
    assert snapshot(experiment) == before


def test_nas_extend_and_retrain(alice, capsys):
    experiment = finished(alice)
    call_command("nas", "extend", str(experiment.pk), "--trials", "2", "--user", "alice")
    assert "extended to 5 trials: queued" in capsys.readouterr().out
    with pytest.raises(CommandError, match="only a succeeded one can be extended"):
        call_command("nas", "extend", str(experiment.pk), "--trials", "2", "--user", "alice")
    with pytest.raises(CommandError, match="retrain once its search has ended"):
        call_command("nas", "retrain", str(experiment.pk), "--epochs", "2", "--user", "alice")
    Experiment.objects.filter(pk=experiment.pk).update(status="succeeded")
    call_command("nas", "retrain", str(experiment.pk), "--epochs", "2", "--user", "alice", "--json")
    assert '"status": "pending"' in capsys.readouterr().out
