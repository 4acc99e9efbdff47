"""Server time of the experiment pages at scale: a fresh database filled through the models with one experiment of
`--trials` trials and `--experiments` experiments in all, and the real views timed through Django's test client.

What is timed (the median of `--repeat` requests each, after one warm-up; server time: the view, its queries and
its template, no network):

- `first_page_ms_median`: the experiment page (the first page of its leaderboard, best first);
- `sorted_page_ms_median`: the leaderboard alone, sorted by parameters, on a page in the middle;
- `filtered_page_ms_median`: the leaderboard filtered to one fidelity and to kept weights;
- `poll_unchanged_ms_median` and `poll_unchanged_bytes`: the page's poll of the unchanged experiment, with the
  cursor of the page (what a browser sends every 1.5 s while nothing happens);
- `list_ms_median`: the experiment list's first page with `--experiments` experiments.

The large experiment carries a strategy checkpoint of `--checkpoint-kb` and every trial a 50-epoch learning curve,
so a page that read them would show it in its time. On PostgreSQL the filled tables are then `VACUUM ANALYZE`d, as
autovacuum does after a large insert (without statistics the planner scans the trials; SQLite needs none).

    python bench/leaderboard.py [--trials 10000] [--experiments 1000] [--repeat 20] [--checkpoint-kb 600]
                                [--database-url postgres://postgres@127.0.0.1:5432/nasboard_bench] [--json]

Without --database-url the database is a fresh SQLite file in a temp dir; with a PostgreSQL URL, a fresh database
named after the URL's on that server, dropped afterwards.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Any, Callable

import _root  # noqa: F401  (the repository root on the path, before the project's imports)

import _platform
from nasjobs.search import ExperimentSpec

BATCH = 5000


def spec_of(args: argparse.Namespace) -> ExperimentSpec:
    return ExperimentSpec(dataset="digits", space="chain_cnn", strategy="evolution", estimator="train",
                          budget=args.trials, epochs=50, seed=0)


def fill(args: argparse.Namespace, user: Any, team: Any) -> Any:
    """The experiments and trials, written in batches through the models; returns the large experiment."""
    from django.db import transaction
    from django.utils import timezone

    from webapp.experiments.models import Experiment, Trial

    rng = random.Random(args.seed)
    spec = spec_of(args)
    now = timezone.now()
    common = dict(team=team, created_by=user, dataset=spec.dataset, space=spec.space, strategy=spec.strategy,
                  estimator=spec.estimator, epochs=spec.epochs, seed=0, status=Experiment.Status.SUCCEEDED,
                  started_at=now, finished_at=now)
    small_state = {"population": ["x" * 100] * (args.small_checkpoint_kb * 10)}
    with transaction.atomic():
        Experiment.objects.bulk_create(
            [Experiment(name=f"experiment {i}", budget=100, trials_done=100, best_val_acc=rng.random(),
                        best_trial_number=0, strategy_state=small_state, **common)
             for i in range(args.experiments - 1)], batch_size=500)
        big = Experiment.objects.create(name="large", budget=args.trials, trials_done=args.trials,
                                        strategy_state={"controller": ["y" * 100] * (args.checkpoint_kb * 10)},
                                        **common)
    for start in range(0, args.trials, BATCH):
        rows = []
        for n in range(start, min(start + BATCH, args.trials)):
            epochs = rng.choice((1, 3, 9, 27))
            rows.append(Trial(experiment=big, number=n, arch_key=f"arch-{n}", arch_display=f"c{16 + n % 48}k3 x{n}",
                              val_acc=rng.random(), params=rng.randrange(10_000, 5_000_000),
                              flops=rng.randrange(1_000_000, 900_000_000), train_seconds=rng.uniform(1, 600),
                              estimator="train", fidelity={"epochs": epochs}, epochs_trained=epochs,
                              curve=[rng.random() for _ in range(50)], evaluations=[0.5],
                              weights_path=f"{n}.pt" if n % 50 == 0 else "", seq=n + 1, proposals=n + 1,
                              distance_to_incumbent=rng.randrange(0, 8), started_at=now, finished_at=now))
        with transaction.atomic():
            Trial.objects.bulk_create(rows, batch_size=1000)
    best = big.trials.order_by("-val_acc", "number").first()
    Experiment.objects.filter(pk=big.pk).update(best_val_acc=best.val_acc, best_trial_number=best.number,
                                                plan_version=args.trials)
    big.refresh_from_db()
    from django.db import connection

    if connection.vendor == "postgresql":  # what autovacuum does after such a fill: statistics, visibility map
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE experiments_trial")
            cursor.execute("VACUUM ANALYZE experiments_experiment")
    return big


def timed(repeat: int, request: Callable[[], Any]) -> tuple[float, Any]:
    """The median milliseconds of `repeat` calls after one warm-up, and the last response (checked 200)."""
    response = request()
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = request()
        seconds.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise SystemExit(f"{response.status_code} from {response.request['PATH_INFO']}")
    return round(statistics.median(seconds) * 1000, 2), response


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with _platform.platform(args.database_url, "leaderboard"):
        from django.db import connection
        from django.test import Client
        from django.urls import reverse

        from webapp.experiments.models import Trial

        user, team = _platform.bench_team_user()
        start = time.perf_counter()
        big = fill(args, user, team)
        fill_s = time.perf_counter() - start
        client = Client(HTTP_HOST="localhost")  # a host the settings allow
        client.force_login(user)
        detail, board = reverse("experiment_detail", args=[big.pk]), reverse("experiment_leaderboard", args=[big.pk])
        status, listing = reverse("experiment_status", args=[big.pk]), reverse("experiment_list")
        middle = max(1, args.trials // 25 // 2)
        first_ms, _ = timed(args.repeat, lambda: client.get(detail))
        sorted_ms, _ = timed(args.repeat, lambda: client.get(board, {"sort": "params", "page": middle}))
        filtered_ms, _ = timed(args.repeat, lambda: client.get(board, {"epochs": 9, "kept": 1}))
        cursor = client.get(status).json()["cursor"]
        poll_ms, poll = timed(args.repeat, lambda: client.get(status, {"since": cursor}))
        list_ms, _ = timed(args.repeat, lambda: client.get(listing))
        return {"trials": Trial.objects.filter(experiment=big).count(), "experiments": args.experiments,
                "first_page_ms_median": first_ms, "sorted_page_ms_median": sorted_ms,
                "filtered_page_ms_median": filtered_ms, "poll_unchanged_ms_median": poll_ms,
                "poll_unchanged_bytes": len(poll.content), "list_ms_median": list_ms,
                "fill_s": round(fill_s, 1), "database": connection.vendor}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000, help="trials of the large experiment (10000)")
    parser.add_argument("--experiments", type=int, default=1000, help="experiments in all, for the list (1000)")
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per page (20)")
    parser.add_argument("--checkpoint-kb", type=int, default=600,
                        help="size of the large experiment's strategy checkpoint, kB (600: a REINFORCE controller)")
    parser.add_argument("--small-checkpoint-kb", type=int, default=20,
                        help="size of every other experiment's strategy checkpoint, kB (20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic figures (0)")
    parser.add_argument("--database-url", default=None,
                        help="postgres://user@host:port/name: a fresh database beside `name` on that server "
                             "(default: a fresh SQLite file in a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of figures")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.experiments < 1 or args.repeat < 1:
        parser.error("--trials, --experiments and --repeat must be positive")
    report = measure(args)
    _platform.emit(report, args, spec_of(args), "bench/leaderboard.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
