"""Calibrations as jobs: claimed once, leased, swept and recovered like exports, continued from the candidates
already measured, cancelled by those who may cancel the experiment, and taken over from a killed worker."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from nasjobs.calibration import CalibrationResult
from nasjobs.search import ExperimentSpec, TrialRecord
from tests.conftest import holder_of, wait_for
from webapp.experiments import services
from webapp.experiments.models import Calibration, Experiment
from webapp.experiments.runner import run_calibration_now

pytestmark = pytest.mark.django_db
SPEC = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=4, epochs=1, seed=0,
                      options={"space": {"max_layers": 2}})
ARCHS = ("c16k3", "c32k5p", "c8k3-c16k3p", "c16k5")
RESULT = CalibrationResult("train 1 epochs", 2, 1.0, 1.0, [], 0.1)  # what a worker would store


def searched(user) -> Experiment:
    """A finished search of four evaluated trials, recorded as a worker records them."""
    experiment = services.experiment_create(user=user, name="searched", spec=SPEC, enqueue=False)
    assert services.experiment_claim(experiment.pk, "w")
    for i, key in enumerate(ARCHS):
        services.trial_record(experiment.pk, "w", TrialRecord(i, key, key, 0.5 + i / 10, 100, 1000, 0.5,
                                                              {"epochs": 1}, [0.5], None, "train"), {"s": i}, [i])
    Experiment.objects.filter(pk=experiment.pk).update(status="succeeded")
    experiment.refresh_from_db()
    return experiment


def silent(calibration: Calibration) -> None:
    """Its worker died: the heartbeat stopped longer ago than the lease."""
    from django.conf import settings

    Calibration.objects.filter(pk=calibration.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.NAS_LEASE_SECONDS + 1))


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    """What would be sent to the queue: the calibrations' ids, kept here instead of sent to Redis."""
    sent: list[int] = []
    monkeypatch.setattr(services, "calibration_enqueue", sent.append)
    return sent


def test_one_worker_claims_a_calibration_and_a_silent_workers_is_swept_and_taken_over(alice, queued):
    calibration = services.calibration_create(experiment=searched(alice), user=alice, k=2, epochs=1, enqueue=False)
    assert services.calibration_claim(calibration.pk, "w1") and not services.calibration_claim(calibration.pk, "w2")
    assert services.calibration_heartbeat(calibration.pk, "w1") == "held"
    assert services.calibrations_sweep() == [] and services.calibrations_recover() == [calibration.pk]
    silent(calibration)
    assert services.calibrations_sweep() == [calibration.pk] and services.calibrations_sweep() == []
    assert queued == [calibration.pk, calibration.pk]  # once recovered, once swept
    calibration.refresh_from_db()
    assert (calibration.status, calibration.claimed_by) == ("queued", "")
    assert services.calibration_claim(calibration.pk, "w2")
    assert services.calibration_heartbeat(calibration.pk, "w1") == "lost"
    assert not services.calibration_finish(calibration.pk, "w1", RESULT)  # the old worker writes nothing
    calibration.refresh_from_db()
    assert (calibration.status, calibration.claimed_by, calibration.attempts) == ("running", "w2", 2)


def test_a_calibration_left_running_without_a_heartbeat_is_recovered_and_taken(alice, queued, capsys):
    """One a worker ran before calibrations had a lease (no heartbeat at all): nothing else would ever take it."""
    calibration = services.calibration_create(experiment=searched(alice), user=alice, k=2, epochs=1, enqueue=False)
    Calibration.objects.filter(pk=calibration.pk).update(status="running", claimed_by="old:1:calibration")
    call_command("nas", "recover")
    assert capsys.readouterr().out == f"queued again: nothing to recover\ncalibrations queued again: {calibration.pk}\n"
    assert queued == [calibration.pk] and services.calibration_claim(calibration.pk, "w2")


def test_a_calibration_taken_over_keeps_the_candidates_measured_before(alice, settings, tmp_path):
    settings.NAS_ARTIFACTS_DIR = tmp_path
    calibration = services.calibration_create(experiment=searched(alice), user=alice, k=2, epochs=1, enqueue=False)
    assert run_calibration_now(calibration.pk, "w1") == "done"
    whole = Calibration.objects.get(pk=calibration.pk).pairs
    again = services.calibration_create(experiment=calibration.experiment, user=alice, k=2, epochs=1, enqueue=False)
    # A first worker measured one candidate (a figure no training gives, to tell it apart) and then died.
    kept = {**whole[0], "reference": 0.123}
    Calibration.objects.filter(pk=again.pk).update(status="running", claimed_by="w1", pairs=[kept])
    silent(again)
    assert run_calibration_now(again.pk, "w2") == "done"
    again.refresh_from_db()
    assert again.status == "succeeded" and again.attempts == 1 and again.claimed_by == "w2"
    assert again.pairs == [kept, *whole[1:]]  # the same candidates; the rest measured as an uninterrupted run did


def test_a_stopping_worker_hands_its_calibration_back(alice, queued, monkeypatch):
    calibration = services.calibration_create(experiment=searched(alice), user=alice, k=2, epochs=1, enqueue=False)

    def stopped(*args, **kwargs):
        raise SystemExit(0)  # SIGTERM to the pool process

    monkeypatch.setattr("nasjobs.calibration.calibrate", stopped)
    with pytest.raises(SystemExit):
        run_calibration_now(calibration.pk, "w1")
    calibration.refresh_from_db()
    assert (calibration.status, calibration.claimed_by, calibration.heartbeat_at) == ("queued", "", None)
    assert queued == [calibration.pk]


def test_a_cancelled_calibration_stops_its_worker_and_keeps_its_status(alice, alice_client, carol, queued):
    experiment = searched(alice)
    calibration = services.calibration_create(experiment=experiment, user=alice, k=2, epochs=1, enqueue=False)
    assert services.calibration_claim(calibration.pk, "w1")
    with pytest.raises(PermissionDenied):  # a member of the team who is neither its owner nor an admin
        services.calibration_cancel(calibration, carol)
    page = alice_client.get(reverse("experiment_detail", args=[experiment.pk])).content.decode()
    assert 'id="cancel-calibration"' in page
    response = alice_client.post(reverse("calibration_cancel", args=[experiment.pk, calibration.pk]), follow=True)
    assert "Calibration cancelled" in response.content.decode()
    assert services.calibration_heartbeat(calibration.pk, "w1") == "cancelled"
    assert not services.calibration_finish(calibration.pk, "w1", RESULT)
    assert not services.calibration_fail(calibration.pk, "w1", "interrupted")
    calibration.refresh_from_db()
    assert calibration.status == "cancelled" and calibration.finished_at is not None and not calibration.error
    assert experiment.events.filter(action="cancelled", detail=f"calibration {calibration.pk}").exists()
    assert "Calibration cancelled after measuring 0 of 2" in alice_client.get(
        reverse("experiment_detail", args=[experiment.pk])).content.decode()


def test_cancelling_an_ended_calibration_says_why_and_another_teams_is_a_404(alice, alice_client, bob, carol):
    experiment = searched(alice)
    calibration = services.calibration_create(experiment=experiment, user=alice, k=2, epochs=1, enqueue=False)
    Calibration.objects.filter(pk=calibration.pk).update(status="succeeded", kendall_tau=0.5)
    url = reverse("calibration_cancel", args=[experiment.pk, calibration.pk])
    response = alice_client.post(url, follow=True)
    assert "Only a queued or running calibration can be cancelled (it is succeeded)" in response.content.decode()
    api = APIClient()
    api.force_authenticate(alice)
    api_url = f"/api/experiments/{experiment.pk}/calibrations/{calibration.pk}/cancel/"
    response = api.post(api_url)
    assert response.status_code == 409 and "it is succeeded" in response.json()["detail"]
    with pytest.raises(CommandError, match="no queued or running calibration \\(its latest is succeeded\\)"):
        call_command("nas", "calibrate", str(experiment.pk), "--cancel", "--user", "alice")
    calibration.refresh_from_db()
    assert (calibration.status, calibration.kendall_tau, calibration.finished_at) == ("succeeded", 0.5, None)

    Calibration.objects.filter(pk=calibration.pk).update(status="running")
    api.force_authenticate(bob)  # another team's: as if neither existed
    assert api.post(api_url).status_code == 404
    alice_client.force_login(bob)
    assert alice_client.post(url).status_code == 404
    api.force_authenticate(carol)  # the team's, but not hers to cancel
    assert api.post(api_url).status_code == 403
    wrong = f"/api/experiments/{experiment.pk}/calibrations/{calibration.pk + 1}/cancel/"
    api.force_authenticate(alice)
    assert api.post(wrong).status_code == 404
    assert Calibration.objects.get(pk=calibration.pk).status == "running"
    response = api.post(api_url)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"


def test_nas_calibrate_cancel_stops_the_running_one(alice, capsys):
    experiment = searched(alice)
    calibration = services.calibration_create(experiment=experiment, user=alice, k=2, epochs=1, enqueue=False)
    call_command("nas", "calibrate", str(experiment.pk), "--cancel", "--user", "alice")
    assert f"calibration {calibration.pk} of experiment {experiment.pk} cancelled" in capsys.readouterr().out
    assert Calibration.objects.get(pk=calibration.pk).status == "cancelled"


# ------------------------------------------------------------------------------------------ with real workers
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_killed_workers_calibration_is_finished_by_another_worker(alice, celery_worker_factory, settings):
    settings.NAS_LEASE_SECONDS = 6
    experiment = searched(alice)
    workers = [celery_worker_factory(NAS_SWEEP_SECONDS="1", NAS_TORCH_THREADS="1") for _ in range(2)]
    for w in workers:
        w.wait_connected()
    # Each candidate trains for about 2 s: the kill lands after the first is measured, before the last.
    calibration = services.calibration_create(experiment=experiment, user=alice, k=3, epochs=20)
    logs = lambda: "\n---\n".join(w.log() for w in workers)  # noqa: E731
    wait_for(lambda: len(Calibration.objects.get(pk=calibration.pk).pairs) >= 1, 60, "a first candidate measured",
             logs)
    first = Calibration.objects.get(pk=calibration.pk)
    victim = holder_of(workers, first.claimed_by)
    victim.kill()
    killed_at = time.monotonic()
    assert Calibration.objects.get(pk=calibration.pk).status == "running"
    survivor = next(w for w in workers if w is not victim)
    wait_for(lambda: Calibration.objects.get(pk=calibration.pk).status not in Calibration.ACTIVE, 60,
             "the other worker to finish it", survivor.log)
    print(f"finished by the other worker {time.monotonic() - killed_at:.1f} s after the kill (lease 6 s)")
    done = Calibration.objects.get(pk=calibration.pk)
    assert done.status == "succeeded", done.error
    assert done.attempts == 2 and done.claimed_by != first.claimed_by and Calibration.objects.count() == 1
    numbers = [p["number"] for p in done.pairs]
    assert len(numbers) == 3 and len(set(numbers)) == 3 and done.pairs[:len(first.pairs)] == first.pairs


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_running_calibration_cancelled_from_the_page_stops_and_its_worker_goes_on(alice, alice_client,
                                                                                   celery_worker_factory):
    experiment = searched(alice)
    worker = celery_worker_factory(NAS_TORCH_THREADS="1")
    calibration = services.calibration_create(experiment=experiment, user=alice, k=3, epochs=200)
    wait_for(lambda: Calibration.objects.get(pk=calibration.pk).status == "running", 60, "the worker to start it",
             worker.log)
    time.sleep(1)  # training
    alice_client.post(reverse("calibration_cancel", args=[experiment.pk, calibration.pk]))
    cancelled_at = time.monotonic()
    wait_for(lambda: "'cancelled'" in worker.log(), 10, "the worker to stop the calibration", worker.log)
    print(f"stopped {time.monotonic() - cancelled_at:.1f} s after the cancel")
    stopped = Calibration.objects.get(pk=calibration.pk)
    assert stopped.status == "cancelled" and stopped.kendall_tau is None and worker.proc.poll() is None
    # The same worker takes the next job.
    alice_client.post(reverse("experiment_calibrate", args=[experiment.pk]), {"k": 2, "epochs": 1})
    wait_for(lambda: experiment.calibrations.first().status == "succeeded", 60, "the next calibration", worker.log)
    assert Calibration.objects.get(pk=calibration.pk).status == "cancelled"
