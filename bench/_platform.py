"""What the platform benches share: a fresh migrated database, real Celery workers on private queues, one experiment
submitted as the web form would, and its trials' timestamps once it ends."""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import _root
from nasjobs.benchmeta import bench_meta
from nasjobs.search import validate_spec

ROOT = Path(_root.ROOT)


@dataclass
class Platform:
    database_url: str  # the fresh database this run uses
    queue: str  # the prefix of the private queues: `<queue>-gpu`, `<queue>-cpu`
    tmp: Path  # artifacts and worker logs
    env: dict[str, str]  # what every worker is started with


def _postgres_fresh(url: str, name: str) -> str:
    """`url` with its database replaced by `name`, created empty on the same server."""
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def _postgres_drop(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


@contextmanager
def platform(database_url: str | None, label: str) -> Iterator[Platform]:
    """A fresh database (a SQLite file in a temp dir by default; with a postgres:// URL, a new database
    `<its name>_<label>_<random>` on that server, dropped afterwards), migrated, with Django set up in this
    process against it, and private queue names. Call once per process: Django's settings are read once."""
    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix=f"nasboard-{label}-"))
    if database_url is None:
        url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    elif database_url.startswith(("postgres://", "postgresql://")):
        url = _postgres_fresh(database_url, f"{urlsplit(database_url).path.lstrip('/') or 'nasboard'}_{label}_{tag}")
    else:
        raise SystemExit(f"--database-url must be postgres://... (or left out for SQLite), not {database_url!r}")
    queue = f"nasboard-bench-{label}-{tag}"
    env = {"DATABASE_URL": url, "NAS_GPU_QUEUE": f"{queue}-gpu", "NAS_CPU_QUEUE": f"{queue}-cpu", "DEBUG": "1",
           "NAS_ARTIFACTS_DIR": str(tmp / "artifacts"), "LOG_LEVEL": "WARNING", "NAS_ENV_FILE": os.devnull}
    os.environ.update(env)  # before Django reads its settings
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    try:
        yield Platform(url, queue, tmp, {**os.environ, **env, "PYTHONPATH": str(ROOT)})
    finally:
        import redis
        from django.conf import settings
        from django.db import connections

        connections.close_all()
        client = redis.Redis.from_url(settings.REDIS_URL)
        client.delete(*(f"{prefix}{queue}-{kind}" for prefix in ("", "_kombu.binding.", "_kombu.binding_permanent.")
                        for kind in ("gpu", "cpu")))
        if not url.startswith("sqlite"):
            _postgres_drop(url)
        shutil.rmtree(tmp, ignore_errors=True)


class Worker:
    """One `celery worker --concurrency 1` in its own process group, on the platform's private queues."""

    def __init__(self, p: Platform, index: int, **env: str) -> None:
        self.name = f"{p.queue}-{index}@bench"
        self.log_path = p.tmp / f"worker-{index}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", f"{p.queue}-gpu,{p.queue}-cpu",
                 "--concurrency", "1", "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "-n",
                 self.name], cwd=ROOT, env={**p.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def stop(self) -> None:
        """SIGTERM the group (pool child too); SIGKILL what is left after 20 s."""
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.proc.poll()
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@contextmanager
def workers(p: Platform, count: int, **env: str) -> Iterator[list[Worker]]:
    """`count` workers, returned once every one answers a ping (so none starts late), stopped afterwards."""
    from webapp.celery import app

    started = [Worker(p, i, **env) for i in range(count)]
    try:
        names = {w.name for w in started}
        deadline = time.monotonic() + 180
        while True:
            answered = {name for reply in app.control.ping(destination=list(names), timeout=1.0) for name in reply}
            if answered >= names:
                break
            dead = [w for w in started if w.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise SystemExit("a worker did not start:\n" + "\n---\n".join(w.log() for w in dead or started))
        yield started
    finally:
        for w in started:
            w.stop()


def bench_team_user() -> tuple[Any, Any]:
    """A user admin of a team without quota, review threshold or parallelism cap, as a lab's own would be."""
    from webapp.teams.services import team_create, user_add

    team = team_create(name="bench", monthly_quota=None, review_threshold=None)
    team.max_parallelism = 256
    team.save(update_fields=["max_parallelism"])
    return user_add(username="bench", password=uuid.uuid4().hex, teams=[team], team_admin=True), team


def run_experiment(spec: Any, user: Any, team: Any, timeout: float, running: list[Worker]) -> Any:
    """Submit `spec` through `experiment_create` (queued on commit, as the web form does) and wait until it ends."""
    from webapp.experiments.models import Experiment
    from webapp.experiments.services import experiment_create

    experiment = experiment_create(user=user, name="bench", spec=spec, team=team)
    deadline = time.monotonic() + timeout
    while Experiment.objects.filter(pk=experiment.pk, status__in=Experiment.ACTIVE).exists():
        if time.monotonic() > deadline or any(w.proc.poll() is not None for w in running):
            raise SystemExit(f"experiment {experiment.pk} did not finish in {timeout:.0f} s:\n"
                             + "\n---\n".join(w.log() for w in running))
        time.sleep(0.5)
    experiment.refresh_from_db()
    if experiment.status != Experiment.Status.SUCCEEDED:
        raise SystemExit(f"experiment {experiment.pk} ended {experiment.status}: {experiment.error}")
    return experiment


def told_trials(experiment: Any) -> list[Any]:
    """The experiment's done trials in the order their results were told."""
    return list(experiment.trials.filter(status="done").order_by("told").only(
        "number", "told", "created_at", "started_at", "finished_at", "claimed_by"))


def median_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 3)


def p95_ms(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 3)


def emit(report: dict[str, Any], args: Any, spec: Any, script: str, argv: list[str] | None) -> None:
    """Print a platform bench's figures (or, with --json, one JSON object), its `meta` recording the commit, the
    command line, the resolved options and spec, and the machine."""
    report["meta"] = bench_meta(args, device="cpu", components={"spec": validate_spec(spec)},
                                argv=None if argv is None else ["python", script, *argv])
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            if key != "meta":
                print(f"{key:22} {value}")
