"""Teams: who may do what, review before compute is spent, quotas, the audit log and notifications."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core import mail
from django.core.exceptions import PermissionDenied
from django.core.management import CommandError, call_command
from django.urls import reverse

from nasjobs.search import ExperimentSpec, SpecError
from webapp.experiments import selectors, services
from webapp.experiments.models import Experiment, ExperimentEvent
from webapp.teams.models import Membership, Team

pytestmark = pytest.mark.django_db
SPEC = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=3, epochs=1, seed=0)
BIG = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=500, epochs=10, seed=0)  # 5,000 trial-epochs


def actions(experiment):
    return list(ExperimentEvent.objects.filter(experiment_ref=experiment.pk).order_by("created_at", "id")
                .values_list("action", flat=True))


def test_a_member_may_not_cancel_a_teammates_experiment_but_its_owner_and_a_team_admin_may(carol, alice,
                                                                                         django_user_model, vision):
    dave = django_user_model.objects.create_user("dave", password="dave-pass-123")
    Membership.objects.create(user=dave, team=vision)
    e = services.experiment_create(user=carol, name="carol's", spec=SPEC, enqueue=False)
    with pytest.raises(PermissionDenied):
        services.experiment_cancel(e, dave)
    with pytest.raises(PermissionDenied):
        services.experiment_delete(e, dave)
    assert Experiment.objects.get(pk=e.pk).status == "queued"
    assert services.experiment_cancel(e, carol)
    assert services.experiment_resume(e, alice)  # alice is an admin of the team
    assert actions(e) == ["created", "cancelled", "resumed"]


def test_a_user_submits_only_to_their_own_teams(bob, vision):
    with pytest.raises(SpecError) as err:
        services.experiment_create(user=bob, name="x", spec=SPEC, team="vision", enqueue=False)
    assert err.value.field == "team"
    assert services.experiment_create(user=bob, name="x", spec=SPEC, enqueue=False).team.name == "speech"
    assert Experiment.objects.count() == 1


def test_the_form_preselects_the_team_last_used(client, django_user_model, vision):
    erin = django_user_model.objects.create_user("erin", password="erin-pass-123")
    speech = Team.objects.create(name="speech")
    Membership.objects.create(user=erin, team=vision)
    Membership.objects.create(user=erin, team=speech)
    services.experiment_create(user=erin, name="in speech", spec=SPEC, team="speech", enqueue=False)
    client.force_login(erin)
    form = client.get(reverse("experiment_new")).context["form"]
    assert form.fields["team"].initial == "speech"
    assert [c for c, _ in form.fields["team"].choices] == ["speech", "vision"]


def test_an_experiment_over_the_threshold_waits_for_a_reviewer_other_than_its_owner(alice, carol,
                                                                                    django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as queued:
        e = services.experiment_create(user=alice, name="big", spec=BIG)
    assert e.status == "pending_review" and e.cost == 5000 and queued == []  # nothing is queued yet
    assert "over the team's review threshold of 2,000" in e.review_reason
    with pytest.raises(PermissionDenied):
        services.experiment_approve(e, carol)  # a member is no reviewer
    # alice owns it, but she is staff: staff review everything
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert services.experiment_approve(e, alice, "fine, the GPUs are idle")
    e.refresh_from_db()
    assert e.status == "queued" and e.reviewed_by == alice and e.review_comment == "fine, the GPUs are idle"
    assert len(queued) == 2  # the enqueue and the owner's notification
    assert actions(e) == ["created", "approved"]
    assert not services.experiment_approve(e, alice)  # only once


def test_a_team_admin_reviews_others_experiments_not_their_own(django_user_model, vision):
    admin = django_user_model.objects.create_user("frank", password="frank-pass-123")
    Membership.objects.create(user=admin, team=vision, role="admin")
    own = services.experiment_create(user=admin, name="frank's", spec=BIG, enqueue=False)
    with pytest.raises(PermissionDenied):
        services.experiment_approve(own, admin)
    grace = django_user_model.objects.create_user("grace", password="grace-pass-123")
    Membership.objects.create(user=grace, team=vision)
    theirs = services.experiment_create(user=grace, name="grace's", spec=BIG, enqueue=False)
    with pytest.raises(SpecError):
        services.experiment_reject(theirs, admin, "  ")  # a rejection says why
    assert services.experiment_reject(theirs, admin, "use the low-fidelity estimator first")
    theirs.refresh_from_db()
    assert theirs.status == "rejected" and theirs.review_comment == "use the low-fidelity estimator first"
    assert not services.experiment_resume(theirs, grace)  # a rejected experiment never runs
    assert not services.experiment_approve(theirs, admin)


def test_the_monthly_quota_sends_the_experiment_that_would_exceed_it_to_review(alice, vision):
    Team.objects.filter(pk=vision.pk).update(monthly_quota=1000, review_threshold=None)
    vision.refresh_from_db()
    first = services.experiment_create(user=alice, name="first", spec=ExperimentSpec(
        **{**SPEC.__dict__, "budget": 90, "epochs": 10}), enqueue=False)
    assert first.status == "queued" and first.cost == 900
    second = services.experiment_create(user=alice, name="second", spec=ExperimentSpec(
        **{**SPEC.__dict__, "budget": 20, "epochs": 10}), enqueue=False)
    assert second.status == "pending_review"
    assert "to 1,100 of its 1,000 trial-epochs this month" in second.review_reason
    # A table lookup trains nothing and costs nothing.
    lookup = services.experiment_create(user=alice, name="lookup", spec=ExperimentSpec(
        "nb201-cifar10", "nb201", "random", "benchmark", budget=1000, epochs=200, seed=0), enqueue=False)
    assert lookup.cost == 0 and lookup.status == "queued"


@pytest.mark.django_db(transaction=True)
def test_two_submissions_at_once_cannot_both_fit_a_quota_only_one_fits(alice, vision, monkeypatch):
    """Each fits the quota alone, not both: decided one after the other, one runs and the other waits for review.
    The quota check is slowed so that, without the lock on the team, both would read the same usage (on
    PostgreSQL; SQLite's immediate transactions serialise them as well)."""
    import time

    from django.db import connection

    Team.objects.filter(pk=vision.pk).update(monthly_quota=1000, review_threshold=None)
    real = services.review_reason

    def slow_review_reason(team, cost):
        reason = real(team, cost)
        time.sleep(0.5)
        return reason

    monkeypatch.setattr(services, "review_reason", slow_review_reason)
    spec = ExperimentSpec(**{**SPEC.__dict__, "budget": 60, "epochs": 10})  # 600 trial-epochs each
    errors: list[BaseException] = []

    def submit(name: str) -> None:
        try:
            services.experiment_create(user=alice, name=name, spec=spec, enqueue=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(f"at once {i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(Experiment.objects.values_list("status", flat=True)) == ["pending_review", "queued"]


def test_a_cancelled_pending_experiment_goes_back_to_review_when_resumed(alice):
    e = services.experiment_create(user=alice, name="big", spec=BIG, enqueue=False)
    assert services.experiment_cancel(e, alice)
    assert services.experiment_resume(e, alice)
    e.refresh_from_db()
    assert e.status == "pending_review"


def test_the_review_queue_shows_cost_and_the_time_similar_runs_took(alice_client, alice, carol):
    from datetime import timedelta

    from django.utils import timezone

    done = services.experiment_create(user=carol, name="done before", spec=SPEC, enqueue=False)
    now = timezone.now()
    Experiment.objects.filter(pk=done.pk).update(status="succeeded", trials_done=3, started_at=now - timedelta(
        seconds=30), finished_at=now)  # 3 trial-epochs in 30 s: 10 s each
    pending = services.experiment_create(user=carol, name="big one", spec=BIG, enqueue=False)
    page = alice_client.get(reverse("review_queue")).content.decode()
    assert "big one" in page and "500 × 10 = 5,000" in page
    assert "13:53:20" in page  # 5,000 trial-epochs at 10 s each
    response = alice_client.post(reverse("experiment_review", args=[pending.pk]),
                                 {"decision": "reject", "comment": "too big", "next": "review_queue"})
    assert response.status_code == 302 and response["Location"] == reverse("review_queue")
    pending.refresh_from_db()
    assert pending.status == "rejected"
    page = alice_client.get(reverse("experiment_detail", args=[pending.pk])).content.decode()
    assert "Rejected" in page and "too big" in page


def test_the_experiment_page_shows_the_audit_log_and_the_traceback_to_team_admins_only(client, alice, carol):
    e = services.experiment_create(user=carol, name="breaks", spec=SPEC, enqueue=False)
    assert services.experiment_claim(e.pk, "host:1:task")
    assert services.experiment_fail(e.pk, "host:1:task", "RuntimeError: CUDA out of memory",
                                    'Traceback (most recent call last):\n  File "/srv/nasboard/nasjobs/x.py"')
    client.force_login(carol)
    page = client.get(reverse("experiment_detail", args=[e.pk])).content.decode()
    assert "RuntimeError: CUDA out of memory" in page and "/srv/nasboard" not in page
    history = page[page.index('id="events"'):]
    assert history.index(">Created<") < history.index(">Started<") < history.index(">Failed<")
    assert "host:1:task" in history
    client.force_login(alice)
    page = client.get(reverse("experiment_detail", args=[e.pk])).content.decode()
    assert "/srv/nasboard/nasjobs/x.py" in page
    assert "traceback" not in client.get(reverse("experiment_status", args=[e.pk])).json()


def test_deleting_keeps_a_line_in_the_audit_log_and_removes_trials_and_weights(alice, settings, tmp_path,
                                                                              django_capture_on_commit_callbacks):
    settings.NAS_ARTIFACTS_DIR = tmp_path
    e = services.experiment_create(user=alice, name="to delete", spec=SPEC, enqueue=False)
    (tmp_path / f"experiment-{e.pk}").mkdir()
    (tmp_path / f"experiment-{e.pk}" / "trial-00000.pt").write_bytes(b"w")
    (tmp_path / "experiment-999").mkdir()
    assert services.experiment_claim(e.pk, "w")
    assert not services.experiment_delete(e, alice)  # running: cancel first
    services.experiment_cancel(e, alice)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.experiment_delete(e, alice)
    assert not Experiment.objects.filter(pk=e.pk).exists()
    assert not (tmp_path / f"experiment-{e.pk}").exists() and (tmp_path / "experiment-999").exists()
    assert actions(e) == ["created", "started", "cancelled", "deleted"]
    assert ExperimentEvent.objects.get(action="deleted").experiment_name == "to delete"


class Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = HTTPServer(("127.0.0.1", 0), Hook)
    Hook.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", Hook.received
    server.shutdown()


def test_the_owner_gets_an_email_and_the_team_webhook_a_post_when_it_finishes(alice, vision, webhook,
                                                                             django_capture_on_commit_callbacks):
    url, received = webhook
    alice.email = "alice@example.org"
    alice.save()
    Team.objects.filter(pk=vision.pk).update(webhook_url=url)
    e = services.experiment_create(user=alice, name="notify me", spec=SPEC, enqueue=False)
    assert services.experiment_claim(e.pk, "w")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.experiment_finish(e.pk, "w", 0, 0.9, "budget")
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["alice@example.org"]
    assert "notify me" in mail.outbox[0].subject and "finished" in mail.outbox[0].subject
    assert received[0]["event"] == "experiment.finished" and received[0]["experiment"] == e.pk
    assert received[0]["team"] == "vision" and received[0]["test_acc"] == 0.9


def test_a_failed_delivery_is_logged_and_never_affects_the_run(alice, vision, caplog,
                                                               django_capture_on_commit_callbacks):
    Team.objects.filter(pk=vision.pk).update(webhook_url="http://127.0.0.1:9/nothing-listens-here")
    e = services.experiment_create(user=alice, name="unlucky hook", spec=SPEC, enqueue=False)
    assert services.experiment_claim(e.pk, "w")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.experiment_fail(e.pk, "w", "ValueError: nan loss")
    assert Experiment.objects.get(pk=e.pk).status == "failed"
    assert "webhook of team vision for experiment" in caplog.text


def test_the_list_is_the_teams_history_filtered_and_paginated(client, carol, bob, alice):
    for i in range(30):
        services.experiment_create(user=carol, name=f"resnet sweep {i}", spec=SPEC, enqueue=False)
    services.experiment_create(user=alice, name="alice evolution", spec=ExperimentSpec(
        **{**SPEC.__dict__, "strategy": "evolution"}), enqueue=False)
    services.experiment_create(user=bob, name="speech thing", spec=SPEC, enqueue=False)
    client.force_login(carol)
    page = client.get(reverse("experiment_list"))
    assert page.context["page"].paginator.count == 31 and len(page.context["experiments"]) == 25
    body = page.content.decode()
    assert "alice evolution" in body and "speech thing" not in body and "page 1 of 2" in body
    assert ">speech<" not in body  # not even as a filter choice
    assert [e.name for e in client.get(reverse("experiment_list"), {"strategy": "evolution"}).context[
        "experiments"]] == ["alice evolution"]
    assert client.get(reverse("experiment_list"), {"owner": "alice", "q": "resnet"}).context[
        "page"].paginator.count == 0
    assert client.get(reverse("experiment_list"), {"q": "SWEEP 29"}).context["page"].paginator.count == 1
    second = client.get(reverse("experiment_list"), {"q": "sweep", "page": "2"}).content.decode()
    assert "resnet sweep 0" in second and 'href="?q=sweep&amp;page=1"' in second


def test_team_and_user_commands(capsys, django_user_model, monkeypatch):
    call_command("nas", "team", "add", "nlp", "--quota", "5000", "--review-threshold", "-1")
    assert "team nlp created" in capsys.readouterr().out
    team = Team.objects.get(name="nlp")
    assert team.monthly_quota == 5000 and team.review_threshold is None
    with pytest.raises(CommandError, match="exists already"):
        call_command("nas", "team", "add", "nlp")
    with pytest.raises(CommandError, match="letters, digits"):
        call_command("nas", "team", "add", "no spaces")
    monkeypatch.setenv("NAS_PASSWORD", "heidi-pass-123")
    call_command("nas", "user", "add", "heidi", "--team", "nlp", "--team-admin", "--email", "heidi@example.org")
    heidi = django_user_model.objects.get(username="heidi")
    assert heidi.check_password("heidi-pass-123") and selectors.is_team_admin(heidi, team.pk)
    assert heidi.email == "heidi@example.org"
    with pytest.raises(CommandError, match="email: 'not-an-address' is not an e-mail address"):
        call_command("nas", "user", "add", "ivan", "--team", "nlp", "--email", "not-an-address")
    monkeypatch.setenv("NAS_PASSWORD", "short")
    with pytest.raises(CommandError, match="password: This password is too short"):
        call_command("nas", "user", "add", "ivan", "--team", "nlp")
    with pytest.raises(CommandError, match="no team 'ghosts'"):
        call_command("nas", "user", "add", "ivan", "--team", "ghosts")
    assert not django_user_model.objects.filter(username="ivan").exists()


def test_submit_from_a_yaml_file_as_a_named_user_and_team(capsys, tmp_path, carol, vision):
    path = tmp_path / "experiment.yaml"
    path.write_text("name: kept in git\nteam: vision\nbudget: 2\nepochs: 1\nseed: 4\n"
                    "options:\n  space:\n    max_layers: 2\n")
    call_command("nas", "submit", "-f", str(path), "--user", "carol", "--seed", "5")
    e = Experiment.objects.get()
    assert e.name == "kept in git" and e.team == vision and e.created_by == carol
    assert e.seed == 5 and e.budget == 2 and e.options["space"]["max_layers"] == 2  # a flag overrides the file
    for text, message in (("budget: [1, 2]\n", "budget: must be an integer"), ("wings: 2\n", "unknown field 'wings'"),
                          ("- a list\n", "must hold one object"), ("name: [unclosed\n", "is not valid YAML")):
        path.write_text(text)
        with pytest.raises(CommandError, match=message):
            call_command("nas", "submit", "-f", str(path), "--user", "carol")
    with pytest.raises(CommandError, match="team: no such team among yours"):
        call_command("nas", "submit", "--team", "speech", "--user", "carol")
    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("nas", "submit", "--user", "nobody")
    assert Experiment.objects.count() == 1


def test_the_command_applies_the_same_rules_as_the_pages(carol, bob, django_user_model, vision):
    e = services.experiment_create(user=carol, name="carol's", spec=SPEC, enqueue=False)
    with pytest.raises(CommandError, match=f"no experiment with id {e.pk}"):
        call_command("nas", "show", str(e.pk), "--user", "bob")
    dave = django_user_model.objects.create_user("dave", password="dave-pass-123")
    Membership.objects.create(user=dave, team=vision)
    with pytest.raises(CommandError, match="not allowed: only its owner, a team admin or staff may cancel it"):
        call_command("nas", "cancel", str(e.pk), "--user", "dave")
    call_command("nas", "cancel", str(e.pk), "--user", "carol")
    assert Experiment.objects.get(pk=e.pk).status == "cancelled"
