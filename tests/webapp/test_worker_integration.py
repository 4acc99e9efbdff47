"""End to end through a real Celery worker process and the real Redis at REDIS_URL."""
import tempfile
import time
from pathlib import Path

import pytest
import torch
from django.urls import reverse

from nasjobs.artifacts import ArtifactStore
from nasjobs.search import MemoryStore, SearchRunner
from tests.conftest import wait_for
from tests.webapp.test_experiment_form import VALID
from webapp.experiments import services
from webapp.experiments.models import Experiment, Trial

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def status_of(pk: int) -> str:
    return Experiment.objects.get(pk=pk).status


def test_a_form_submission_runs_to_success_on_a_real_worker(alice_client, celery_worker_factory, settings):
    worker = celery_worker_factory()
    response = alice_client.post(reverse("experiment_new"), {**VALID, "budget": "4", "epochs": "2", "top_k": "2"})
    assert response.status_code == 302
    experiment = Experiment.objects.get()
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 180, "the experiment to finish", worker.log)
    experiment.refresh_from_db()
    assert experiment.status == "succeeded", experiment.error
    assert experiment.trials_done == 4 and Trial.objects.filter(experiment=experiment).count() == 4
    assert 0 < experiment.test_acc <= 1
    assert experiment.best_trial_number == Trial.objects.order_by("-val_acc", "number").first().number
    files = sorted(Path(settings.NAS_ARTIFACTS_DIR, f"experiment-{experiment.pk}").iterdir())
    assert len(files) == 2  # top-k weights only
    assert set(Trial.objects.exclude(weights_path="").values_list("weights_path", flat=True)) == {str(f) for f in files}

    # The "Calibrate" button: the worker trains K candidates in full and stores the estimator's trust.
    alice_client.post(reverse("experiment_calibrate", args=[experiment.pk]), {"k": "3", "epochs": "2"})
    calibration = experiment.calibrations.get()
    wait_for(lambda: experiment.calibrations.get().status not in ("queued", "running"), 120, "the calibration",
             worker.log)
    calibration.refresh_from_db()
    assert calibration.status == "succeeded", calibration.error
    assert len(calibration.pairs) == 3 and -1 <= calibration.kendall_tau <= 1


def test_it_resumes_after_worker_is_killed(alice, celery_worker_factory):
    spec = Experiment(dataset="digits", space="chain_cnn", strategy="random", estimator="train", budget=4,
                      epochs=8, seed=5, top_k=2).spec()
    experiment = services.experiment_create(user=alice, name="killed", spec=spec)
    first = celery_worker_factory()
    wait_for(lambda: Experiment.objects.get(pk=experiment.pk).trials_done >= 1, 180, "a trial", first.log)
    first.kill()
    experiment.refresh_from_db()
    done_at_kill = experiment.trials_done
    assert experiment.status == "running" and done_at_kill < 4

    second = celery_worker_factory()  # on start it re-queues the orphan and takes it once the lease runs out
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 240, "the resumed run to finish", second.log)
    experiment.refresh_from_db()
    assert experiment.status == "succeeded", experiment.error
    numbers = list(Trial.objects.filter(experiment=experiment).order_by("number").values_list("number", flat=True))
    assert numbers == list(range(4))

    # The architectures are exactly those of an uninterrupted run of the same experiment.
    reference = MemoryStore()
    with tempfile.TemporaryDirectory() as tmp:
        SearchRunner(spec, reference, ArtifactStore(tmp, 0), torch.device("cpu")).run()
    keys = list(Trial.objects.filter(experiment=experiment).order_by("number").values_list("arch_key", flat=True))
    assert keys == [t.arch_key for t in reference.trials]


def test_a_cancelled_experiment_keeps_its_trials_and_resumes_to_the_end(alice_client, alice, celery_worker_factory):
    # Trials long enough (200 epochs: several seconds even on a fast machine, far longer than the 2 s between two
    # heartbeats) that the cancel lands mid-trial and is noticed before the trial could finish on its own.
    spec = Experiment(dataset="digits", space="chain_cnn", strategy="random", estimator="train", budget=4,
                      epochs=200, seed=1, top_k=1).spec()
    experiment = services.experiment_create(user=alice, name="cancel me", spec=spec)
    worker = celery_worker_factory()
    wait_for(lambda: Experiment.objects.get(pk=experiment.pk).trials_done >= 1 and Trial.objects.filter(
        experiment=experiment, status="running").exists(), 180, "a trial done and the next under way", worker.log)
    alice_client.post(reverse("experiment_cancel", args=[experiment.pk]))
    cancelled_at = time.monotonic()
    assert status_of(experiment.pk) == "cancelled"
    # The worker notices between two batches (its heartbeat runs there, at most every 2 s), not at the end of
    # the epoch, and stops; whatever it recorded stays.
    wait_for(lambda: "cancelled" in worker.log(), 5, "the worker to stop within 5 s", worker.log)
    print(f"the worker stopped {time.monotonic() - cancelled_at:.2f} s after the cancel")
    experiment.refresh_from_db()
    kept = experiment.trials_done
    assert experiment.status == "cancelled" and 1 <= kept < 4
    assert Trial.objects.filter(experiment=experiment, status="done").count() == kept
    # The trial it was training is handed back, pending: a resume trains it again from its start.
    assert list(Trial.objects.filter(experiment=experiment).exclude(status="done").values_list("status", flat=True)) \
        == ["pending"]

    alice_client.post(reverse("experiment_resume", args=[experiment.pk]))
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 180, "the resumed run", worker.log)
    experiment.refresh_from_db()
    assert experiment.status == "succeeded" and experiment.trials_done == 4
    assert list(Trial.objects.filter(experiment=experiment).values_list("number", flat=True)) == list(range(4))


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own on a free port, which the test can kill and start again (empty)."""
    import shutil
    import socket
    import subprocess

    server = shutil.which("redis-server")
    assert server, "redis-server is needed for this test (apt-get install redis-server)"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Redis:
        url = f"redis://127.0.0.1:{port}/0"
        proc: subprocess.Popen | None = None

        def start(self) -> None:
            import redis

            self.proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no", "--dir", str(tmp_path)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: _pings(redis, self.url), 20, "the private redis-server to answer")

        def kill(self) -> None:
            self.proc.kill()
            self.proc.wait(10)

    r = Redis()
    r.start()
    yield r
    r.kill()


def _pings(redis_module, url: str) -> bool:
    try:
        return bool(redis_module.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


def test_a_restarted_redis_loses_no_experiment(alice, celery_worker_factory, private_redis):
    """Redis keeps nothing on disk here: a restart drops every queued message. The worker's trials go straight to
    the database, and on reconnecting it queues again what the database says is unfinished."""
    long = Experiment(dataset="digits", space="chain_cnn", strategy="random", estimator="train", budget=3,
                      epochs=60, seed=2, top_k=1).spec()
    short = Experiment(dataset="digits", space="chain_cnn", strategy="random", estimator="train", budget=2,
                       epochs=2, seed=3, top_k=1).spec()
    second = services.experiment_create(user=alice, name="queued behind it", spec=short, enqueue=False)
    first = services.experiment_create(user=alice, name="running through the restart", spec=long, enqueue=False)
    worker = celery_worker_factory(REDIS_URL=private_redis.url)  # on start it queues both, newest first
    wait_for(lambda: Experiment.objects.get(pk=first.pk).trials_done >= 1, 180, "a trial of the first", worker.log)
    assert status_of(second.pk) in Experiment.ACTIVE  # its next trial waits in the queue

    private_redis.kill()  # every queued message is gone with it
    private_redis.start()
    for experiment in (first, second):
        wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 240, f"{experiment.name} to finish",
                 worker.log)
        experiment.refresh_from_db()
        assert experiment.status == "succeeded", experiment.error
        assert list(Trial.objects.filter(experiment=experiment).values_list("number", flat=True)) == \
            list(range(experiment.budget))
