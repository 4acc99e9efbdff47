"""Platform overhead per trial: a NAS-Bench-201 table-lookup search (a trial costs microseconds) through real Celery
workers and the database, against the same search in a plain in-process loop.

One experiment (`nb201` space, `nb201-cifar10`, `benchmark` estimator, `--strategy`, `--trials` trials,
`--parallelism`) is submitted through `experiment_create` into a fresh database and run by `--workers` real
`celery worker --concurrency 1` processes on private queues. What is measured, from the Trial rows once it ends:

- the per-trial time: the gaps between the `finished_at` of consecutive trials in told order (`finished_at` is
  stamped under the experiment's lock as a result is told), i.e. one whole cycle as the workers see it: tell,
  plan, write and queue the next trial, commit, the broker's delivery, claim, read, evaluate, report. With
  parallelism 1 nothing overlaps, so this is the platform's overhead per trial (the lookup itself is ~0.1 ms);
  `overhead_ms_median`, `overhead_ms_p95`, and the median of the first and of the last 100 gaps (flatness);
- `trials_per_s`: trials / (last trial's `finished_at` - first trial's `started_at`);
- `bare_loop_ratio`: `overhead_ms_median` / the median per-trial time of the same spec run by
  `nasjobs.search.SearchRunner` with a `MemoryStore` (the gaps between consecutive `record_trial` calls).

    python bench/overhead.py [--trials 2000] [--strategy random] [--parallelism 1] [--workers 1] [--seed 0]
                             [--database-url postgres://postgres@127.0.0.1:5432/nasboard_bench] [--json]

Without --database-url the database is a fresh SQLite file in a temp dir; with a PostgreSQL URL, a fresh database
named after the URL's (`nasboard_bench_overhead_<random>`) on that server, dropped afterwards.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

import _root  # noqa: F401  (the repository root on the path, before the project's imports)

import _platform
from nasjobs.artifacts import ArtifactStore
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner, resolve_device, validate_spec


def spec_of(args: argparse.Namespace) -> ExperimentSpec:
    return ExperimentSpec(dataset="nb201-cifar10", space="nb201", strategy=args.strategy, estimator="benchmark",
                          budget=args.trials, epochs=1, seed=args.seed, parallelism=args.parallelism)


class TimedStore(MemoryStore):
    """A memory store that notes when each trial is recorded."""

    def record_trial(self, trial: Any, strategy_state: dict[str, Any], kept: list[int]) -> None:
        super().record_trial(trial, strategy_state, kept)
        self.recorded_at.append(time.perf_counter())


def bare_loop(spec: ExperimentSpec) -> list[float]:
    """Per-trial seconds of the same search in one process, nothing persisted but in memory."""
    store = TimedStore()
    store.recorded_at = []
    with tempfile.TemporaryDirectory() as tmp:
        runner = SearchRunner(validate_spec(spec), store, ArtifactStore(tmp, 1), resolve_device("cpu"))
        runner.dataset  # the table loaded before timing, as a worker's first trial loads it once
        runner.run()
    return [b - a for a, b in zip(store.recorded_at, store.recorded_at[1:])]


def platform_run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    with _platform.platform(args.database_url, "overhead") as p:
        from django.db import connection

        vendor = connection.vendor
        user, team = _platform.bench_team_user()
        with _platform.workers(p, args.workers) as running:
            experiment = _platform.run_experiment(spec_of(args), user, team, args.timeout, running)
        trials = _platform.told_trials(experiment)
    finished = [t.finished_at for t in trials]
    gaps = [(b - a).total_seconds() for a, b in zip(finished, finished[1:])]
    wall = (finished[-1] - trials[0].started_at).total_seconds()
    figures = {"overhead_ms_median": _platform.median_ms(gaps), "overhead_ms_p95": _platform.p95_ms(gaps),
               "trials_per_s": round(len(trials) / wall, 2),
               "first_100_ms_median": _platform.median_ms(gaps[:100]),
               "last_100_ms_median": _platform.median_ms(gaps[-100:]),
               "trials": len(trials), "wall_s": round(wall, 2),
               "workers_used": len({t.claimed_by for t in trials})}
    return figures, vendor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000, help="trials of the experiment (default 2000)")
    parser.add_argument("--strategy", default="random", help="search strategy (default random)")
    parser.add_argument("--parallelism", type=int, default=1, help="trials in flight at once (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="celery worker processes (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="the experiment's seed (default 0)")
    parser.add_argument("--database-url", default=None,
                        help="postgres://user@host:port/name: a fresh database beside `name` on that server "
                             "(default: a fresh SQLite file in a temp dir)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the experiment (1800)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of figures")
    args = parser.parse_args(argv)
    if args.trials < 3 or args.parallelism < 1 or args.workers < 1:
        parser.error("--trials must be at least 3, --parallelism and --workers positive")
    figures, vendor = platform_run(args)
    bare = bare_loop(spec_of(args))
    bare_ms = _platform.median_ms(bare)
    report = {**figures, "bare_loop_ms_median": bare_ms,
              "bare_loop_ratio": round(figures["overhead_ms_median"] / bare_ms, 1) if bare_ms else None,
              "database": vendor}
    _platform.emit(report, args, spec_of(args), "bench/overhead.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
