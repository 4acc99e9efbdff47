"""Shared fixtures: named users on two teams, and a real Celery worker process against the real Redis.

alice: staff, and admin of team "vision"; carol: a member of "vision"; bob: a member of "speech"."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionfinish(session, exitstatus) -> None:
    """Empty the queues that tests without a worker of their own queued jobs on (pytest.ini names them), so none
    is left in a developer's Redis; a Redis that is not there has nothing to empty."""
    queues = [os.environ.get(name, "") for name in ("NAS_GPU_QUEUE", "NAS_CPU_QUEUE")]
    queues = [q for q in queues if q.startswith("nasboard-test")]
    if not queues:
        return
    try:
        import redis
        from django.conf import settings

        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5).delete(*queues)
    except Exception:  # noqa: BLE001  (no Redis, or settings never configured: nothing was queued)
        pass


def _member(user, team_name: str, role: str = "member"):
    from webapp.teams.models import Membership, Team

    team, _ = Team.objects.get_or_create(name=team_name)
    Membership.objects.create(user=user, team=team, role=role)
    return user


@pytest.fixture
def vision(db):
    from webapp.teams.models import Team

    return Team.objects.get_or_create(name="vision")[0]


@pytest.fixture
def alice(django_user_model, vision):
    return _member(django_user_model.objects.create_user("alice", password="alice-pass-123", is_staff=True,
                                                         is_superuser=True), "vision", "admin")


@pytest.fixture
def bob(django_user_model):
    return _member(django_user_model.objects.create_user("bob", password="bob-pass-123"), "speech")


@pytest.fixture
def carol(django_user_model, vision):
    return _member(django_user_model.objects.create_user("carol", password="carol-pass-123"), "vision")


@pytest.fixture
def demo(django_user_model):
    """The user `manage.py nas` acts as by default, admin of the demo team (what `make run` creates)."""
    return _member(django_user_model.objects.create_user("demo", password="demo-pass-123"), "demo", "admin")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def database_url_for_subprocess() -> str:
    """The URL of the test database this test process is using, for a worker started beside it."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class WorkerProcess:
    """One `celery worker` in its own process group, listening on a queue private to this test."""

    def __init__(self, env: dict[str, str], queue: str, log_path: Path) -> None:
        self.env, self.queue, self.log_path = env, queue, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", f"{self.queue}-gpu,{self.queue}-cpu",
             "--concurrency", "1",
             "--loglevel", "INFO", "--without-gossip", "--without-mingle", "-n", f"{self.queue}-{uuid.uuid4().hex[:6]}@%h"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _signal_and_wait(self, sig: int, timeout: float) -> bool:
        """Signal the whole group and wait until every process in it (pool children too) has gone."""
        if self.proc is None or not self._group_alive():
            return True
        os.killpg(self.proc.pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the leader so it stops counting as alive
            if not self._group_alive():
                return True
            time.sleep(0.1)
        return False

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once, as a crash or an OOM kill would."""
        assert self._signal_and_wait(signal.SIGKILL, 10), "worker survived SIGKILL"

    def stop(self) -> None:
        if not self._signal_and_wait(signal.SIGTERM, 20):
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_connected(self, timeout: float = 60) -> "WorkerProcess":
        """Wait until it consumes its queues, so that a job queued now may go to it."""
        wait_for(lambda: " ready." in self.log_path.read_text(errors="replace"), timeout, "the worker to connect",
                 self.log)
        return self


def holder_of(workers: list[WorkerProcess], claimed_by: str) -> WorkerProcess:
    """The worker whose pool process claimed a job: a job's `claimed_by` is `host:pid:...`."""
    pid = int(claimed_by.split(":")[1])
    return next(w for w in workers if os.getpgid(pid) == w.proc.pid)


@pytest.fixture
def celery_worker_factory(settings, tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real workers that share this test's database and a queue of their own on the real Redis."""
    queue = f"nasboard-test-{uuid.uuid4().hex[:10]}"
    settings.NAS_GPU_QUEUE, settings.NAS_CPU_QUEUE = f"{queue}-gpu", f"{queue}-cpu"
    settings.NAS_ARTIFACTS_DIR = tmp_path / "artifacts"
    env = dict(os.environ, DATABASE_URL=database_url_for_subprocess(), NAS_GPU_QUEUE=f"{queue}-gpu",
               NAS_CPU_QUEUE=f"{queue}-cpu", DEBUG="1",
               NAS_ARTIFACTS_DIR=str(tmp_path / "artifacts"), NAS_LEASE_SECONDS=str(settings.NAS_LEASE_SECONDS),
               LOG_LEVEL="INFO", PYTHONPATH=str(ROOT))
    workers: list[WorkerProcess] = []

    def start(**overrides: str) -> WorkerProcess:
        worker = WorkerProcess({**env, **overrides}, queue, tmp_path / f"worker-{len(workers)}.log").start()
        workers.append(worker)
        return worker

    yield start
    for w in workers:
        w.stop()
    import redis
    from django.conf import settings as live

    redis.Redis.from_url(live.REDIS_URL).delete(f"{queue}-gpu", f"{queue}-cpu")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, on_fail: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{on_fail()}")
