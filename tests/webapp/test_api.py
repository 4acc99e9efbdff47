"""The REST API: token, submit, poll, trials, export, review; the same rules and validation as the pages."""
import io
import zipfile

import pytest
from django.test import Client
from django.urls import reverse

from nasjobs.search import ExperimentSpec, TrialRecord
from webapp.experiments import services
from webapp.experiments.models import Experiment, Export
from webapp.experiments.runner import export_run_now

pytestmark = pytest.mark.django_db
SPEC = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=3, epochs=1, seed=0)
SUBMIT = {"name": "from a script", "dataset": "digits", "space": "chain_cnn", "strategy": "random", "budget": 3,
          "epochs": 1, "options": {"space": {"max_layers": 2}}}


def token_client(username: str, password: str) -> Client:
    response = Client().post("/api/token/", {"username": username, "password": password})
    assert response.status_code == 200, response.content
    return Client(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")


@pytest.fixture
def carol_api(carol):
    return token_client("carol", "carol-pass-123")


def with_trials(experiment, accs):
    assert services.experiment_claim(experiment.pk, "w")
    for i, acc in enumerate(accs):
        key = f"c{16 * (i + 1)}k3"
        services.trial_record(experiment.pk, "w", TrialRecord(i, key, key, acc, 1000 - i, 5000 + i, 0.1 * i, {},
                                                              [acc], None, "train"), {}, [i])
    return experiment


def test_a_token_is_issued_for_good_credentials_only_and_can_be_revoked(carol):
    assert Client().post("/api/token/", {"username": "carol", "password": "nope"}).status_code == 400
    api = token_client("carol", "carol-pass-123")
    assert api.get("/api/experiments/").status_code == 200
    assert api.delete("/api/token/").status_code == 204
    assert api.get("/api/experiments/").status_code == 401


def test_submit_poll_and_list(carol_api, carol, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = carol_api.post("/api/experiments/", SUBMIT, content_type="application/json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["team"] == "vision" and data["owner"] == "carol" and data["status"] == "queued"
    assert data["trials_done"] == 0 and data["budget"] == 3 and data["best"] is None
    assert data["options"]["space"]["max_layers"] == 2 and len(callbacks) == 1
    with_trials(Experiment.objects.get(pk=data["id"]), [0.5, 0.9])
    polled = carol_api.get(f"/api/experiments/{data['id']}/").json()
    assert polled["trials_done"] == 2 and polled["best"]["val_acc"] == 0.9 and polled["best"]["arch"] == "c32k3"
    listed = carol_api.get("/api/experiments/", {"status": "running"}).json()
    assert listed["count"] == 1 and listed["results"][0]["best"] == {
        "number": 1, "arch": "c32k3", "val_acc": 0.9, "test_acc": None, "params": 999}
    assert carol_api.get("/api/experiments/", {"strategy": "evolution"}).json()["count"] == 0


@pytest.mark.parametrize("changes, field, message", [
    ({"budget": 0}, "budget", "must be an integer from 1"),
    ({"budget": "many"}, "budget", "valid integer"),
    ({"space": "nope"}, "space", "unknown search space 'nope'"),
    ({"options": {"space": {"max_layers": 0}}}, "options.space.max_layers", "must be at least 1"),
    ({"options": {"wings": {}}}, "options", "unknown option group 'wings'"),
    ({"name": ""}, "name", "may not be blank"),
    ({"team": "speech"}, "team", "no such team among yours"),
])
def test_validation_errors_are_400_per_field_and_create_nothing(carol_api, bob, changes, field, message):
    response = carol_api.post("/api/experiments/", {**SUBMIT, **changes}, content_type="application/json")
    assert response.status_code == 400
    assert any(message in m for m in response.json()[field]), response.json()
    assert Experiment.objects.count() == 0


def test_trials_are_paginated_and_sortable_and_the_best_exports_as_a_model(carol_api, carol, settings, tmp_path):
    settings.NAS_ARTIFACTS_DIR = tmp_path
    e = with_trials(services.experiment_create(user=carol, name="t", spec=SPEC, enqueue=False), [0.3, 0.8, 0.6])
    by_acc = carol_api.get(f"/api/experiments/{e.pk}/trials/").json()
    assert by_acc["count"] == 3 and [t["val_acc"] for t in by_acc["results"]] == [0.8, 0.6, 0.3]
    by_params = carol_api.get(f"/api/experiments/{e.pk}/trials/", {"ordering": "params"}).json()["results"]
    assert [t["params"] for t in by_params] == [998, 999, 1000]
    assert carol_api.get(f"/api/experiments/{e.pk}/trials/", {"ordering": "curve"}).status_code == 400
    export = f"/api/experiments/{e.pk}/trials/1/exports/torch/"
    assert carol_api.post(export).status_code == 202  # a worker builds it; here, this process does
    assert export_run_now(Export.objects.get().pk, "test") == "done"
    zipped = carol_api.get(export + "download/")
    assert zipped.status_code == 200 and zipped["Content-Type"] == "application/zip"
    assert "model.pt2" in zipfile.ZipFile(io.BytesIO(b"".join(zipped.streaming_content))).namelist()
    assert carol_api.post(f"/api/experiments/{e.pk}/trials/7/exports/torch/").status_code == 404


def test_cancel_resume_and_delete_through_the_api(carol_api, carol):
    e = services.experiment_create(user=carol, name="t", spec=SPEC, enqueue=False)
    assert carol_api.post(f"/api/experiments/{e.pk}/resume/").status_code == 409
    assert carol_api.delete(f"/api/experiments/{e.pk}/").status_code == 409  # queued: cancel first
    assert carol_api.post(f"/api/experiments/{e.pk}/cancel/").json()["status"] == "cancelled"
    assert carol_api.post(f"/api/experiments/{e.pk}/resume/").json()["status"] == "queued"
    carol_api.post(f"/api/experiments/{e.pk}/cancel/")
    assert carol_api.delete(f"/api/experiments/{e.pk}/").status_code == 204
    assert carol_api.get(f"/api/experiments/{e.pk}/").status_code == 404


def test_review_through_the_api(carol_api, alice, carol):
    big = dict(SUBMIT, budget=500, epochs=10)
    pending = carol_api.post("/api/experiments/", big, content_type="application/json").json()
    assert pending["status"] == "pending_review" and "review threshold" in pending["review"]["reason"]
    assert carol_api.post(f"/api/experiments/{pending['id']}/approve/").status_code == 403  # not a reviewer
    alice_api = token_client("alice", "alice-pass-123")
    assert alice_api.post(f"/api/experiments/{pending['id']}/reject/", {}).status_code == 400  # a reason is due
    approved = alice_api.post(f"/api/experiments/{pending['id']}/approve/", {"comment": "ok"}).json()
    assert approved["status"] == "queued" and approved["review"]["reviewed_by"] == "alice"
    assert alice_api.post(f"/api/experiments/{pending['id']}/approve/").status_code == 409


def test_teams_and_datasets(carol_api):
    teams = carol_api.get("/api/teams/").json()["results"]
    assert teams == [{"id": teams[0]["id"], "name": "vision", "role": "member", "monthly_quota": 100000,
                      "review_threshold": 2000, "used_this_month": 0}]
    assert "digits" in [d["name"] for d in carol_api.get("/api/datasets/").json()["results"]]


def test_the_openapi_schema_lists_the_routes_and_the_docs_page_renders(carol_api, client, carol):
    schema = carol_api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert schema["openapi"].startswith("3.")
    for route in ("/api/token/", "/api/experiments/", "/api/experiments/{id}/cancel/", "/api/experiments/{id}/"
                  "trials/", "/api/experiments/{id}/trials/{number}/exports/{fmt}/",
                  "/api/experiments/{id}/trials/{number}/exports/{fmt}/download/", "/api/teams/", "/api/datasets/"):
        assert route in schema["paths"], route
    client.force_login(carol)
    docs = client.get(reverse("api-docs")).content.decode()
    assert "swagger-ui" in docs and "cdn" not in docs.lower()


def test_a_trial_at_chance_level_says_so_in_the_api(carol_api, carol):
    e = services.experiment_create(user=carol, name="chance", spec=SPEC, enqueue=False)
    assert services.experiment_claim(e.pk, "w")
    for i, (acc, fidelity) in enumerate([(0.9, {}), (0.1, {"chance_level": True})]):
        services.trial_record(e.pk, "w", TrialRecord(i, f"c{16 * (i + 1)}k3", "a", acc, 1000, 5000, 0.1, fidelity,
                                                     [acc], None, "train"), {}, [i])
    trials = carol_api.get(f"/api/experiments/{e.pk}/trials/").json()["results"]
    assert [(t["number"], t["chance_level"]) for t in trials] == [(0, False), (1, True)]
    detail = carol_api.get(f"/api/experiments/{e.pk}/").json()
    assert detail["best"]["chance_level"] is False
