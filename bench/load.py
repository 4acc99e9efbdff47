"""Load on the web server: gunicorn with 2 workers on a fresh database holding an experiment of `--trials` trials,
a real search running meanwhile, and `--clients` concurrent logged-in clients in another process for `--seconds`.

Each client loops over the pages a team has open: the experiment list, the large experiment's page, a page of its
leaderboard (sorted by parameters where the leaderboard route exists, else the experiment page's `?page=N`), a
trial page, the running search's status poll, and the API's experiment list and a page of trials, waiting about
`--think` seconds after each answer as a person reading a page (or an open page between its polls, 1.5 s) does;
`--think 0` makes it a closed loop, every client always waiting on the server. With a think time the clients
arrive as independent people do, each at a seeded moment within the first think interval, rather than all in one
instant (with `--think 0` they all start at once). Every request carries the session cookie of one logged-in user.
Before the clients start, every page is requested `--warmup` times (not counted), as a server that has been up a
while has loaded its templates and code. Reported (client side, so the clients' own time on a busy machine is in
it):

- `requests`, `errors` (a connection error, a timeout or any status but 200), `status_5xx`;
- `p50_ms`, `p99_ms` over every request, `per_page_p99_ms` for each kind of page, `requests_per_s`;
- `server_p50_ms`, `server_p99_ms`: the same requests as gunicorn timed them (its access log's `%(D)s`, from
  the request read to the response written), so a tail that the server did not see shows as the clients' own;
- `search_trials_done`: trials the real search (a `random` search on the NAS-Bench-201 table, one Celery worker)
  recorded during the run, so the pages were read while a worker wrote.

    python bench/load.py [--seconds 60] [--clients 50] [--think 1.5] [--warmup 3] [--trials 3000]
                         [--search-budget 10000] [--json]
                         [--database-url postgres://postgres@127.0.0.1:5432/nasboard_bench]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import _root  # noqa: F401  (the repository root on the path, before the project's imports)

import _platform
from nasjobs.search import ExperimentSpec

BATCH = 2000


def search_spec(args: argparse.Namespace) -> ExperimentSpec:
    return ExperimentSpec(dataset="nb201-cifar10", space="nb201", strategy="random", estimator="benchmark",
                          budget=args.search_budget, epochs=1, seed=0)


def fill(trials: int, user: Any, team: Any, seed: int = 0) -> Any:
    """One finished experiment of `trials` distinct NAS-Bench-201 cells (real architecture strings, so its trial
    pages draw them), written in batches through the models; synthetic figures from a seeded generator."""
    from django.db import transaction
    from django.utils import timezone

    from nasjobs.spaces.nb201 import NB201
    from webapp.experiments.models import Experiment, Trial

    rng, space, now = random.Random(seed), NB201(), timezone.now()
    trials = min(trials, space.size())
    experiment = Experiment.objects.create(
        name="large", team=team, created_by=user, dataset="nb201-cifar10", space="nb201", strategy="evolution",
        estimator="benchmark", budget=trials, trials_done=trials, epochs=1, seed=seed,
        status=Experiment.Status.SUCCEEDED, started_at=now, finished_at=now)
    indices = rng.sample(range(space.size()), trials)
    for start in range(0, trials, BATCH):
        rows = []
        for number in range(start, min(start + BATCH, trials)):
            arch = space.from_index(indices[number])
            acc = rng.random()
            rows.append(Trial(experiment=experiment, number=number, arch_key=space.to_str(arch),
                              arch_display=space.display(arch), val_acc=acc, evaluations=[acc],
                              params=rng.randrange(100_000, 1_500_000), flops=rng.randrange(10**6, 2 * 10**8),
                              train_seconds=0.0, estimator="benchmark", curve=[acc], proposals=number + 1,
                              told=number, started_at=now, finished_at=now))
        with transaction.atomic():
            Trial.objects.bulk_create(rows, batch_size=1000)
    best = experiment.trials.order_by("-val_acc", "number").first()
    Experiment.objects.filter(pk=experiment.pk).update(best_val_acc=best.val_acc, best_trial_number=best.number)
    return experiment


def pages(large: Any, search: Any, trials: int) -> dict[str, list[str]]:
    """The URLs each kind of page is drawn from."""
    from django.urls import NoReverseMatch, reverse

    last_page, api_pages = max(1, -(-trials // 25)), min(20, max(1, -(-trials // 50)))
    try:
        board = reverse("experiment_leaderboard", args=[large.pk])
        leaderboard = [f"{board}?sort=params&page={n}" for n in range(1, last_page + 1)]
    except NoReverseMatch:
        leaderboard = [f"{reverse('experiment_detail', args=[large.pk])}?page={n}" for n in range(1, last_page + 1)]
    return {
        "list": [reverse("experiment_list")],
        "experiment": [reverse("experiment_detail", args=[large.pk])],
        "leaderboard": leaderboard,
        "trial": [reverse("trial_detail", args=[large.pk, n]) for n in range(0, trials, max(1, trials // 200))],
        "status": [reverse("experiment_status", args=[search.pk])],
        "api": [reverse("api-experiment-list"),
                *(f"{reverse('api-experiment-trials', args=[large.pk])}?page={n}" for n in range(1, api_pages + 1))],
    }


def percentile_ms(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (seconds), in milliseconds."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else 0.0


def drive(url: str, cookie: str, plan: dict[str, list[str]], clients: int, seconds: float,
          think: float) -> dict[str, Any]:
    """`clients` threads, each with its own HTTP session, requesting pages round-robin by kind for `seconds`, each
    waiting a seeded uniform 0.5 to 1.5 times `think` seconds after each answer (0: none, a closed loop); with a
    think time each client's first request comes at a seeded uniform moment within the first `think` seconds."""
    import requests

    samples: list[tuple[str, float, int]] = []  # (kind, seconds, status or 0 for an error)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    kinds = sorted(plan)

    def client(index: int) -> None:
        rng = random.Random(index)
        session = requests.Session()
        session.cookies.set("sessionid", cookie)
        mine = []
        step = index
        if think:
            time.sleep(rng.uniform(0, think))
        while time.monotonic() < deadline:
            kind = kinds[step % len(kinds)]
            step += 1
            start = time.perf_counter()
            try:
                status = session.get(url + rng.choice(plan[kind]), timeout=30, allow_redirects=False).status_code
            except requests.RequestException:
                status = 0
            mine.append((kind, time.perf_counter() - start, status))
            if think:
                time.sleep(think * rng.uniform(0.5, 1.5))
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started

    return {"requests": len(samples), "errors": sum(1 for _, _, s in samples if s != 200),
            "status_5xx": sum(1 for _, _, s in samples if s >= 500),
            "p50_ms": percentile_ms([d for _, d, _ in samples], 0.50),
            "p99_ms": percentile_ms([d for _, d, _ in samples], 0.99),
            "per_page_p99_ms": {k: percentile_ms([d for kind, d, _ in samples if kind == k], 0.99) for k in kinds},
            "statuses": {str(s): sum(1 for _, _, x in samples if x == s) for s in sorted({s for _, _, s in samples})},
            "requests_per_s": round(len(samples) / wall, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(env: dict[str, str], port: int, log_path: Any, access_log: Any) -> subprocess.Popen:
    """gunicorn with 2 workers and production settings over plain HTTP, each request's microseconds in
    `access_log`; returns once /healthz answers."""
    import requests

    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "webapp.wsgi:application", "--bind",
                             f"127.0.0.1:{port}", "--workers", "2", "--timeout", "60", "--access-logfile",
                             str(access_log), "--access-logformat", "%(D)s %(s)s %(U)s"], cwd=_platform.ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("gunicorn did not start:\n" + open(log_path, errors="replace").read()[-3000:])


def warm_up(url: str, cookie: str, plan: dict[str, list[str]], times: int) -> None:
    """The first five pages of every kind requested `times` times, one after another."""
    import requests

    session = requests.Session()
    session.cookies.set("sessionid", cookie)
    for _ in range(times):
        for urls in plan.values():
            for path in urls[:5]:
                session.get(url + path, timeout=60, allow_redirects=False)


def server_times(access_log: Any, skip: int) -> list[float]:
    """The seconds gunicorn took over each request in its access log after the first `skip` lines."""
    with open(access_log) as lines:
        return [int(line.split()[0]) / 1e6 for i, line in enumerate(lines) if i >= skip and line.strip()]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    # One secret for this process (which makes the session) and the server (which checks its hash).
    os.environ["SECRET_KEY"] = secrets.token_urlsafe(50)
    with _platform.platform(args.database_url, "load") as p:
        from django.conf import settings
        from django.db import connection
        from django.test import Client

        from webapp.experiments.models import Experiment
        from webapp.experiments.services import experiment_create

        user, team = _platform.bench_team_user()
        start = time.perf_counter()
        large = fill(args.trials, user, team)
        fill_s = time.perf_counter() - start
        browser = Client()
        browser.force_login(user)
        cookie = browser.cookies[settings.SESSION_COOKIE_NAME].value
        server_env = {**p.env, "DEBUG": "0", "SECURE_COOKIES": "0", "SECURE_SSL_REDIRECT": "0",
                      "SECURE_HSTS_SECONDS": "0", "ALLOWED_HOSTS": "127.0.0.1", "LOG_LEVEL": "WARNING"}
        port = free_port()
        access_log = p.tmp / "access.log"
        server = start_gunicorn(server_env, port, p.tmp / "gunicorn.log", access_log)
        try:
            with _platform.workers(p, 1, NAS_TORCH_THREADS="1") as running:
                search = experiment_create(user=user, name="search under load", spec=search_spec(args), team=team)
                plan = pages(large, search, args.trials)
                warm_up(f"http://127.0.0.1:{port}", cookie, plan, args.warmup)
                time.sleep(0.5)  # the access log written out
                before = len(server_times(access_log, 0))
                done = subprocess.run(
                    [sys.executable, __file__, "--drive", f"http://127.0.0.1:{port}", "--cookie", cookie,
                     "--plan", json.dumps(plan), "--clients", str(args.clients), "--seconds", str(args.seconds),
                     "--think", str(args.think)],
                    cwd=_platform.ROOT, capture_output=True, text=True, timeout=args.seconds + 300)
                if done.returncode != 0:
                    raise SystemExit("the clients failed:\n" + done.stderr[-3000:])
                report = json.loads(done.stdout)
                time.sleep(0.5)
                served = server_times(access_log, before)
                search_done = Experiment.objects.get(pk=search.pk).trials.filter(status="done").count()
                if any(w.proc.poll() is not None for w in running):
                    raise SystemExit("the worker died:\n" + running[0].log())
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        if report["status_5xx"]:
            print(open(p.tmp / "gunicorn.log", errors="replace").read()[-3000:], file=sys.stderr)
        return {**report, "server_p50_ms": percentile_ms(served, 0.50), "server_p99_ms": percentile_ms(served, 0.99),
                "server_requests": len(served),
                "clients": args.clients, "seconds": args.seconds, "think_s": args.think, "warmup": args.warmup,
                "trials": large.trials.count(), "search_trials_done": search_done, "gunicorn_workers": 2,
                "fill_s": round(fill_s, 1), "database": connection.vendor}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long the clients run (60)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    parser.add_argument("--think", type=float, default=1.5,
                        help="seconds a client waits after each answer, jittered 0.5 to 1.5 times (1.5: an open "
                             "experiment page polls every 1.5 s; 0: a closed loop, every client always waiting)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="times each page is requested before the clients start, not counted (3)")
    parser.add_argument("--trials", type=int, default=3000, help="trials of the large experiment (3000)")
    parser.add_argument("--search-budget", type=int, default=10_000,
                        help="budget of the search running meanwhile (10000 table lookups: it still writes when "
                             "the clients stop)")
    parser.add_argument("--database-url", default=None,
                        help="postgres://user@host:port/name: a fresh database beside `name` on that server "
                             "(default: a fresh SQLite file in a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of figures")
    # The client process this script starts itself.
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--cookie", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        print(json.dumps(drive(args.drive, args.cookie, json.loads(args.plan), args.clients, args.seconds,
                               args.think)))
        return 0
    if args.seconds <= 0 or args.clients < 1 or args.trials < 1 or args.search_budget < 1 or args.think < 0 \
            or args.warmup < 0:
        parser.error("--seconds, --clients, --trials and --search-budget must be positive, --think and --warmup at "
                     "least 0")
    report = measure(args)
    _platform.emit(report, args, search_spec(args), "bench/load.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
