"""Trials per hour of one real-training experiment with 1 and with 2 Celery workers: how the platform scales.

One experiment (`chain_cnn` space on `digits`, `train` estimator, `--strategy`, `--trials` trials of `--epochs`
epochs, parallelism 2, `--seed`) runs twice in a fresh database, through `experiment_create` and real
`celery worker --concurrency 1` processes with 1 torch thread each (NAS_TORCH_THREADS=1): once with 1 worker,
once with 2. The same seed proposes the same architectures both times (with 1 worker the 2 trials in flight run
one after the other). Wall time of a run: its first trial's `started_at` to its last trial's `finished_at` (worker
start-up and the final test-set evaluation left out); trials per hour = trials / wall time; `speedup` =
`trials_per_hour_2` / `trials_per_hour_1`. `idle_ms_median_<n>`: the median gap on each worker between finishing
one trial and starting its next (planning, the queue, the claim), `train_s_median_<n>`: the estimator's own
median `train_seconds` per trial.

    python bench/scaling.py [--trials 40] [--epochs 20] [--strategy random] [--seed 0]
                            [--database-url postgres://postgres@127.0.0.1:5432/nasboard_bench] [--json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from typing import Any

import _root  # noqa: F401  (the repository root on the path, before the project's imports)

import _platform
from nasjobs.search import ExperimentSpec

PARALLELISM = 2


def spec_of(args: argparse.Namespace) -> ExperimentSpec:
    return ExperimentSpec(dataset="digits", space="chain_cnn", strategy=args.strategy, estimator="train",
                          budget=args.trials, epochs=args.epochs, seed=args.seed, parallelism=PARALLELISM, top_k=2)


def figures_of(trials: list[Any]) -> dict[str, Any]:
    wall = (max(t.finished_at for t in trials) - min(t.started_at for t in trials)).total_seconds()
    by_worker: dict[str, list[Any]] = defaultdict(list)
    for t in trials:
        by_worker[t.claimed_by].append(t)
    idle = [(b.started_at - a.finished_at).total_seconds()
            for runs in by_worker.values()
            for a, b in zip(sorted(runs, key=lambda t: t.started_at), sorted(runs, key=lambda t: t.started_at)[1:])]
    return {"wall_s": round(wall, 2), "trials_per_hour": round(len(trials) / wall * 3600, 1),
            "idle_ms_median": _platform.median_ms(idle) if idle else None,
            "train_s_median": round(statistics.median(t.train_seconds for t in trials), 3),
            "workers_used": len(by_worker), "archs": [t.arch_key for t in sorted(trials, key=lambda t: t.number)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="trials of each run (default 40)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs per trial (default 20: a few seconds)")
    parser.add_argument("--strategy", default="random", help="search strategy (default random)")
    parser.add_argument("--seed", type=int, default=0, help="the experiment's seed, the same in both runs (0)")
    parser.add_argument("--database-url", default=None,
                        help="postgres://user@host:port/name: a fresh database beside `name` on that server "
                             "(default: a fresh SQLite file in a temp dir)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for each run (default 900)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of figures")
    args = parser.parse_args(argv)
    if args.trials < 2 or args.epochs < 1:
        parser.error("--trials must be at least 2, --epochs positive")
    runs: dict[int, dict[str, Any]] = {}
    with _platform.platform(args.database_url, "scaling") as p:
        from django.db import connection

        vendor = connection.vendor
        user, team = _platform.bench_team_user()
        for count in (1, 2):
            with _platform.workers(p, count, NAS_TORCH_THREADS="1") as running:
                experiment = _platform.run_experiment(spec_of(args), user, team, args.timeout, running)
            runs[count] = figures_of(_platform.told_trials(experiment))
    report: dict[str, Any] = {}
    for count, figures in runs.items():
        report.update({f"{key}_{count}": value for key, value in figures.items() if key != "archs"})
    report["trials"], report["epochs"] = args.trials, args.epochs
    report["speedup"] = round(runs[2]["trials_per_hour"] / runs[1]["trials_per_hour"], 3)
    report["same_architectures"] = runs[1]["archs"] == runs[2]["archs"]
    report["database"] = vendor
    _platform.emit(report, args, spec_of(args), "bench/scaling.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
