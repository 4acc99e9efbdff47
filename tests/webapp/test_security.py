"""Access rules over every URL the site has: taken from the resolver, so a new URL cannot be forgotten."""
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from nasjobs.search import ExperimentSpec, TrialRecord
from webapp.experiments import services
from webapp.experiments.models import Experiment

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
SPEC = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=3, epochs=1, seed=0)
# The only URLs an anonymous visitor may open (the API's token route answers POST only).
ANONYMOUS = {"login", "healthz", "admin:login"}
SECRET_NAME = "vision-secret-experiment"
# Open to anyone, but a 404 while no mail server is configured (the tests configure none).
MAIL_ONLY = {"password_reset", "password_reset_done", "password_reset_confirm", "password_reset_complete"}
# Pages that answer a bad request without their query string (compare: which experiments).
NEEDS_QUERY = {"experiment_compare"}


def named_urls(resolver: URLResolver | None = None, namespace: str = "",
               inherited: tuple[str, ...] = ()) -> list[tuple[str, list[str]]]:
    """Every named URL of the site as (name, its parameters), walking nested includes."""
    found = []
    for entry in (resolver or get_resolver()).url_patterns:
        params = (*inherited, *entry.pattern.regex.groupindex)
        if isinstance(entry, URLResolver):
            found += named_urls(entry, f"{namespace}{entry.namespace}:" if entry.namespace else namespace, params)
        elif isinstance(entry, URLPattern) and entry.name:
            found.append((namespace + entry.name, list(params)))
    return found


@pytest.fixture
def vision_experiment(alice, tmp_path, settings):
    """An experiment of team "vision" with one trial and one search epoch, and a dataset of the team, so every
    object URL resolves."""
    from webapp.datasets.models import Dataset
    from webapp.experiments.models import Calibration, SearchEpoch

    settings.NAS_ARTIFACTS_DIR = tmp_path
    e = services.experiment_create(user=alice, name=SECRET_NAME, spec=SPEC, enqueue=False)
    assert services.experiment_claim(e.pk, "w")
    services.trial_record(e.pk, "w", TrialRecord(0, "c16k3", "c16k3", 0.5, 10, 20, 0.1, {}, [0.5], None, "train"),
                          {}, [0])
    SearchEpoch.objects.create(experiment=e, epoch=0, train_loss=1, train_acc=0.5, val_loss=1, val_acc=0.5,
                               alphas={}, genotype="c16k3", param_free_fraction=0.0)
    e.calibration_pk = Calibration.objects.create(experiment=e, k=2, epochs=1, created_by=alice).pk
    e.dataset_pk = Dataset.objects.create(team=e.team, owner=alice, name=f"{SECRET_NAME}-data", kind="image",
                                          source="imagefolder", status="ready", input_shape=[1, 8, 8]).pk
    return e


def concrete(name: str, params: list[str], experiment: Experiment) -> str | None:
    values = {"pk": experiment.pk, "number": 0, "epoch": 0, "object_id": experiment.pk, "app_label": "experiments",
              "id": experiment.team_id, "fmt": "torch", "uidb64": "MQ", "token": "set-password",
              "calibration_id": experiment.calibration_pk}
    if name.startswith("admin:") and params and name != "admin:app_list":
        values["object_id"] = experiment.pk
        if any(p not in values for p in params):
            return None  # the admin's own (staff-only) plumbing, e.g. content-type shortcuts
    if any(p not in values for p in params):
        raise AssertionError(f"URL {name} has parameters {params} this test cannot fill: add them here")
    if name == "team_webhook":
        values["pk"] = experiment.team_id
    if name.startswith(("dataset_", "api-dataset")):
        values["pk"] = experiment.dataset_pk
    return reverse(name, kwargs={p: values[p] for p in params})


STAFF_ONLY = {"worker_list"}


def all_urls(experiment):
    urls = [(name, params, concrete(name, params, experiment)) for name, params in named_urls()]
    return [(name, params, url) for name, params, url in urls if url is not None]


def test_anonymous_visitors_are_sent_to_the_login_page_or_get_401(client, vision_experiment):
    urls = all_urls(vision_experiment)
    assert len(urls) > 30
    for name, _, url in urls:
        response = client.get(url)
        if name in ANONYMOUS:
            assert response.status_code == 200, name
        elif name in MAIL_ONLY:
            assert response.status_code == 404, name
        elif name.startswith("admin:"):
            assert response.status_code == 302 and "login/" in response["Location"], name
        elif url.startswith("/api/") and name != "api-docs":
            assert response.status_code == 401, (name, response.status_code)
        else:
            assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), name
    assert client.post(reverse("api-experiment-list"), {"name": "x"}).status_code == 401
    assert Experiment.objects.count() == 1


def test_another_teams_objects_are_404_everywhere_and_absent_from_every_list(client, bob, vision_experiment):
    client.force_login(bob)
    token = client.post(reverse("api-token"), {"username": "bob", "password": "bob-pass-123"}).json()["token"]
    api = Client(HTTP_AUTHORIZATION=f"Token {token}")
    checked = 0
    for name, params, url in all_urls(vision_experiment):
        if name.startswith("admin:"):
            # bob is not staff: the admin only offers its login form
            assert client.get(url).status_code == (200 if name == "admin:login" else 302), name
            continue
        for who in (client, api) if url.startswith("/api/") and name != "api-docs" else (client,):
            response = who.get(url)
            if "pk" in params:
                assert response.status_code in (404, 405), (name, response.status_code)
                # 405 where the route takes no POST: the same answer a missing object gets
                assert who.post(url).status_code in (404, 405), name
                if url.startswith("/api/"):
                    assert who.delete(url).status_code in (404, 405), name
                checked += 1
            else:  # a staff page is a 404 to anyone else
                expected = (404,) if name in STAFF_ONLY | MAIL_ONLY else (400,) if name in NEEDS_QUERY else (200, 405)
                assert response.status_code in expected, (name, response.status_code)
                assert SECRET_NAME not in response.content.decode(errors="replace"), name
    assert checked >= 15
    vision_experiment.refresh_from_db()
    assert vision_experiment.status == "running"  # bob's cancels and deletes changed nothing
    assert vision_experiment.trials.count() == 1


def test_every_form_post_needs_a_csrf_token(alice, vision_experiment):
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(alice)
    posted = 0
    for name, _, url in all_urls(vision_experiment):
        if name in ("login",) or name.startswith("admin:") and name != "admin:experiments_experiment_changelist":
            continue
        response = csrf_client.post(url, {"decision": "approve", "k": "2", "epochs": "1"})
        assert response.status_code == 403, (name, response.status_code)
        posted += 1
    assert posted > 15
    login = Client(enforce_csrf_checks=True).post(reverse("login"), {"username": "alice", "password": "x"})
    assert login.status_code == 403
    vision_experiment.refresh_from_db()
    assert vision_experiment.status == "running"


def test_check_deploy_with_production_settings_reports_no_warnings(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50), "NAS_ENV_FILE": "",
           "ALLOWED_HOSTS": "nas.example.org", "NAS_VAR_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


def test_passwords_and_tokens_never_reach_the_logs(client, bob, caplog, capsys, vision):
    caplog.set_level(logging.DEBUG)
    client.post(reverse("login"), {"username": "bob", "password": "bob-pass-123"})
    client.post(reverse("login"), {"username": "bob", "password": "wrong-secret-456"})
    token = Client().post(reverse("api-token"), {"username": "bob", "password": "bob-pass-123"}).json()["token"]
    Client(HTTP_AUTHORIZATION=f"Token {token}").get(reverse("api-experiment-list"))
    Client(HTTP_AUTHORIZATION="Token not-a-real-token-789").get(reverse("api-experiment-list"))
    os.environ["NAS_PASSWORD"] = "dora-pass-321-long"
    try:
        call_command("nas", "user", "add", "dora", "--team", "vision")
    finally:
        del os.environ["NAS_PASSWORD"]
    logged = caplog.text + capsys.readouterr().out
    assert "user dora created" in logged
    for secret in ("bob-pass-123", "wrong-secret-456", token, "not-a-real-token-789", "dora-pass-321-long"):
        assert secret not in logged
