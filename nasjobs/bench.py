"""Benchmarks of the engine's strategies on the NAS-Bench-201 table (`python -m nasjobs.bench strategies|proposals`)."""
from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from nasjobs import nb201_table
from nasjobs.artifacts import ArtifactStore
from nasjobs.benchmeta import bench_meta
from nasjobs.estimators import ESTIMATORS
from nasjobs.options import parse_config
from nasjobs.rng import derive_seed
from nasjobs.search import LIMITS, ExperimentSpec, MemoryStore, SearchRunner, TrialRecord, best_trial
from nasjobs.spaces import SearchSpace
from nasjobs.strategies import STRATEGIES, Strategy

REPORT_BUDGETS = (25, 50, 100)


class OptunaTPE(Strategy):
    """Optuna's TPESampler with default settings in ask/tell form, one categorical parameter per token position:
    the off-the-shelf peer our strategies are measured against (benchmark only; optuna is not a runtime need)."""

    name = "optuna_tpe"
    title = "Optuna TPE (peer)"

    def __init__(self, space: SearchSpace, config: Any, seed: int) -> None:
        import optuna

        super().__init__(space, config, seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed % 2**32))
        self.vocab = space.vocabulary()
        self.pending: dict[str, list] = {}

    def propose(self) -> Any:
        trial = self.study.ask()
        tokens = [self.vocab[p].index(trial.suggest_categorical(f"t{p}", self.vocab[p])) for p in range(len(self.vocab))]
        arch = self.space.from_tokens(tokens)
        self.pending.setdefault(self.space.to_str(arch), []).append(trial)
        return arch

    def observe(self, arch: Any, value: float) -> None:
        trials = self.pending.get(self.space.to_str(arch))
        if trials:
            self.study.tell(trials.pop(0), value)

    def state_dict(self) -> dict[str, Any]:
        """A summary only: the loop records one after every trial, but the peer is never resumed."""
        return {"trials": len(self.study.trials)}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # pragma: no cover - the benchmark never resumes
        raise NotImplementedError("optuna_tpe is a benchmark peer and is not checkpointed")


@dataclass
class RecordingStore(MemoryStore):
    """A MemoryStore that notes, after every evaluation (re-evaluations included), the architecture the experiment
    names as its best at that moment: the trial with the highest mean (`nasjobs.search.best_trial`)."""

    reported: list[str] = field(default_factory=list)  # after evaluation n (1-based): reported[n - 1]
    unique: list[int] = field(default_factory=list)  # architectures evaluated after evaluation n

    def record_trial(self, trial: TrialRecord, strategy_state: dict[str, Any], kept: list[int]) -> None:
        super().record_trial(trial, strategy_state, kept)
        self.reported.append(best_trial(self.trials).arch_key)
        self.unique.append(len(self.trials))


@dataclass
class RunResult:
    """What one run named as its best after each evaluation (benchmark indices), and its trials."""

    reported: list[int] = field(default_factory=list)  # after evaluation n (1-based): reported[n - 1]
    unique: list[int] = field(default_factory=list)  # architectures evaluated after evaluation n
    trials: list[TrialRecord] = field(default_factory=list)
    best_number: int = -1  # the trial the finished experiment named best
    stop_reason: str = ""
    seconds: float = 0.0


def bench_spec(strategy: str, dataset: str, budget: int, seed: int,
               options: dict[str, Any] | None = None) -> ExperimentSpec:
    """The experiment a benchmark run is: the `benchmark` estimator on `dataset`'s table, one 200-epoch
    validation seed per evaluation, drawn from the trial's seed (as the platform draws it)."""
    return ExperimentSpec(f"nb201-{dataset}", "nb201", strategy, "benchmark", budget=budget, epochs=200, seed=seed,
                          options={"strategy": dict(options or {}),
                                   "estimator": {"fidelity": "200", "count_flops": False}},
                          top_k=1)


def run_search(strategy: str, dataset: str, budget: int, seed: int,
               options: dict[str, Any] | None = None) -> RunResult:
    """One run of the platform's own loop (`SearchRunner` with a `MemoryStore`): budget, repeats, re-evaluations
    and the reported best are exactly an experiment's; the dataset `nb201-<dataset>` names the table. The peer
    `optuna_tpe`, not a registered strategy, takes the place of the runner's strategy with the seed the runner
    would have given it."""
    started = time.perf_counter()
    store = RecordingStore()
    with tempfile.TemporaryDirectory() as root:  # stays empty: a table lookup has no weights
        peer = strategy == OptunaTPE.name
        runner = SearchRunner(bench_spec("random" if peer else strategy, dataset, budget, seed, options), store,
                              ArtifactStore(root, seed), torch.device("cpu"))
        if peer:
            runner.strategy = OptunaTPE(runner.space, None, derive_seed(runner.spec.seed, "strategy"))
        runner.run()
    reported = [runner.space.index(runner.space.from_str(key)) for key in store.reported]
    unique = list(store.unique)
    while len(reported) < budget:  # the space ran out ("exhausted"): the last pick stands
        reported.append(reported[-1])
        unique.append(unique[-1])
    best_number = store.best[0] if store.best else -1
    return RunResult(reported, unique, store.trials, best_number, store.stop_reason, time.perf_counter() - started)


def make_strategy(name: str, space: SearchSpace, seed: int, options: dict[str, Any] | None = None) -> Strategy:
    if name == OptunaTPE.name:
        return OptunaTPE(space, None, seed)
    cls = STRATEGIES.get(name)
    return cls(space, parse_config(cls.Config, options or {}), seed)


def bench_strategies(space_name: str, dataset: str, budget: int, runs: int, strategies: list[str],
                     options: dict[str, dict[str, Any]] | None = None,
                     progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Each strategy's figure at each reported budget n: the mean over `runs` of the 200-epoch test accuracy of
    the trial with the best mean after n evaluations. Run r has the same experiment seed for every strategy, so
    all see the same validation-seed draws for the same trial number (common random numbers)."""
    if space_name != "nb201":
        raise ValueError("the strategy bench runs on the nb201 table only")
    table = nb201_table.load(dataset)
    budgets = [b for b in REPORT_BUDGETS if b <= budget] + ([budget] if budget not in REPORT_BUDGETS else [])
    results = []
    for name in strategies:
        started = time.perf_counter()
        figures: dict[int, list[float]] = {b: [] for b in budgets}
        unique: dict[int, list[int]] = {b: [] for b in budgets}
        strategy = name.split("@")[0]  # "bo@reeval": strategy bo with the options given for "bo@reeval"
        for run in range(runs):
            outcome = run_search(strategy, dataset, budget, derive_seed("bench", run) % 2**31,
                                 (options or {}).get(name))
            for b in budgets:
                figures[b].append(float(table.test200[outcome.reported[b - 1]]))
                unique[b].append(outcome.unique[b - 1])
        seconds = time.perf_counter() - started
        for b in budgets:
            values = figures[b]
            results.append({"strategy": name, "budget": b, "mean": round(statistics.fmean(values), 3),
                            "std": round(statistics.pstdev(values), 3),
                            "architectures": round(statistics.fmean(unique[b]), 1), "seconds": round(seconds, 1)})
        progress(f"{name}: " + ", ".join(f"{b}: {statistics.fmean(figures[b]):.2f}" for b in budgets)
                 + f" ({seconds:.0f} s)")
    return {"space": space_name, "dataset": dataset, "runs": runs, "optimum": round(table.optimum_test200(), 2),
            "oracle_top10": round(oracle_ceiling(table), 2), "options": options or {}, "results": results}


def oracle_ceiling(table: nb201_table.DatasetTable, k: int = 10, draws: int = 4000, seed: int = 0) -> float:
    """What the protocol lets even a perfect search report: an oracle evaluates the `k` cells of best mean
    200-epoch validation accuracy once each (one validation seed drawn at random, as a trial observes) and
    names the highest reading; the figure is the mean test accuracy of that cell over `draws` draws. Validation
    and test disagree among near-equal cells, so this is below the table's optimum."""
    rng = np.random.default_rng(seed)
    top = np.argsort(-table.val200_mean, kind="stable")[:k]
    picks = rng.integers(0, table.val200_count[top], size=(draws, k))
    readings = table.val200[top[None, :], picks]
    return float(table.test200[top[np.argmax(readings, axis=1)]].mean())


class Measured(Exception):
    """Raised by the proposal bench's store once the last point is reached: the run has served its purpose."""


@dataclass
class ProposalStore(MemoryStore):
    """A MemoryStore that notes the checkpoint's size (JSON bytes, as a store writes it) when the trials reach each
    of `points`, and ends the run at the last."""

    points: tuple[int, ...] = ()
    state_bytes: dict[int, int] = field(default_factory=dict)
    trial_ends: list[tuple[int, float]] = field(default_factory=list)  # (trials recorded, perf_counter) per record

    def record_trial(self, trial: TrialRecord, strategy_state: dict[str, Any], kept: list[int]) -> None:
        super().record_trial(trial, strategy_state, kept)
        self.trial_ends.append((len(self.trials), time.perf_counter()))
        if len(self.trials) in self.points:
            self.state_bytes[len(self.trials)] = len(json.dumps(strategy_state))
        if len(self.trials) >= max(self.points):
            raise Measured()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Stalled(Exception):
    """Raised by the proposal bench when a strategy proposes evaluated cells for long: it has settled."""


def bench_proposals(strategy: str, dataset: str, points: tuple[int, ...], window: int, seed: int,
                    patience: int = 200) -> dict[str, Any]:
    """Milliseconds per `propose()` and checkpoint bytes of `strategy` in the platform's own loop on `dataset`'s
    table, at each of `points` trials: the proposals timed are those made while the experiment held from
    `point - window` to `point` trials (repeats of evaluated cells included), the checkpoint is the one recorded
    with trial `point`. The budget is the largest the platform accepts, so no final race begins.

    A strategy that stops finding new cells (`patience` proposals in a row of evaluated ones: evolution and
    REINFORCE settle on a region of the 15,625 cells long before 10,000) is measured on a filled history: the
    bench records random unseen cells as trials, as an experiment that imported them would hold, and resumes the
    experiment from its checkpoint and those trials. `filled_from` says at which trial that began, `filled` how
    many trials were filled in all."""
    store = ProposalStore(points=points)
    spec = bench_spec(strategy, dataset, LIMITS["budget"][1], seed)
    timings: dict[int, list[float]] = {n: [] for n in points}
    fill = random.Random(derive_seed("fill", seed))
    filled_from, filled = None, 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        while True:
            runner = SearchRunner(spec, store, ArtifactStore(root, seed), torch.device("cpu"))
            propose = runner.strategy.propose
            since_new = [len(store.trials), 0]  # trials when last counted, proposals since

            def timed() -> Any:
                count = len(store.trials)
                since_new[:] = [count, 0] if count != since_new[0] else [count, since_new[1] + 1]
                if since_new[1] >= patience:
                    raise Stalled()
                begin = time.perf_counter()
                arch = propose()
                elapsed_ms = (time.perf_counter() - begin) * 1000
                for n in points:
                    if n - window <= count < n:
                        timings[n].append(elapsed_ms)
                return arch

            runner.strategy.propose = timed  # type: ignore[method-assign]
            try:
                runner.run()
            except Measured:
                break
            except Stalled:
                pass
            # Settled: fill to the next point's window, or to the point once its window holds enough proposals.
            filled_from = len(store.trials) if filled_from is None else filled_from
            n = next(n for n in points if n > len(store.trials))
            target = n if len(timings[n]) >= window or len(store.trials) >= n - window else n - window
            seen = {t.arch_key for t in store.trials}
            while len(store.trials) < target:
                arch = runner.space.sample(fill)
                key = runner.space.to_str(arch)
                if key in seen:
                    continue
                seen.add(key)
                number = len(store.trials)
                result = runner.estimator.evaluate(arch, spec.epochs, seed=runner.trial_seed(number))
                store.trials.append(TrialRecord(number, key, runner.space.display(arch), result.val_acc,
                                                result.params, result.flops, 0.0, result.fidelity, result.curve))
                filled += 1
            if len(store.trials) in points:
                store.state_bytes[len(store.trials)] = len(json.dumps(store.state))
            if len(store.trials) >= max(points):
                break
    report: dict[str, Any] = {}
    for n in points:
        report[f"ms_{n}"] = round(statistics.median(timings[n]), 3) if timings[n] else None
        report[f"p95_{n}"] = round(percentile(timings[n], 95), 3) if timings[n] else None
        report[f"proposals_{n}"] = len(timings[n])
        report[f"state_bytes_{n}"] = store.state_bytes.get(n)
        # Whole trials (proposal, lookup, observe, checkpoint, bookkeeping) recorded in the same window.
        ends = [t for count, t in store.trial_ends if n - window <= count <= n]
        gaps = [(b - a) * 1000 for a, b in zip(ends, ends[1:])]
        report[f"trial_ms_{n}"] = round(statistics.median(gaps), 3) if gaps else None
    report.update({"filled_from": filled_from, "filled": filled, "seconds": round(time.perf_counter() - started, 1)})
    return report


def components(names: list[str], dataset: str, options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The resolved configs a bench's runs use: each strategy's (its defaults with `options` applied; the peer has
    none) and the `benchmark` estimator's, as `bench_spec` sets it."""
    spec = bench_spec("random", dataset, 1, 0)
    strategies: dict[str, Any] = {}
    for name in names:
        cls = None if name.split("@")[0] == OptunaTPE.name else STRATEGIES.get(name.split("@")[0])
        strategies[name] = None if cls is None else parse_config(cls.Config, (options or {}).get(name))
    return {"space": spec.space, "dataset": spec.dataset, "strategies": strategies,
            "estimator": {"name": spec.estimator,
                          "config": parse_config(ESTIMATORS.get(spec.estimator).Config, spec.options["estimator"])}}


def format_proposals(report: dict[str, Any]) -> str:
    points = report["points"]
    lines = [f"proposal cost on the {report['dataset']} table: median ms per proposal (p95), checkpoint "
             "bytes, at each number of trials",
             f"{'strategy':<14}" + "".join(f"{f'ms@{n}':>18}{f'bytes@{n}':>12}" for n in points)]
    for name, row in report["strategies"].items():
        cells = "".join(f"{row[f'ms_{n}']:>9.2f} ({row[f'p95_{n}']:>6.1f}){row[f'state_bytes_{n}'] or 0:>12}"
                        for n in points)
        note = f"  filled from {row['filled_from']}" if row["filled_from"] is not None else ""
        lines.append(f"{name:<14}{cells}{note}")
    return "\n".join(lines)


def format_table(report: dict[str, Any], seconds: float) -> str:
    budgets = sorted({r["budget"] for r in report["results"]})
    names = list(dict.fromkeys(r["strategy"] for r in report["results"]))
    cells = {(r["strategy"], r["budget"]): r for r in report["results"]}
    lines = [f"{report['space']} on {report['dataset']}, {report['runs']} runs: test accuracy (%) of the reported "
             f"architecture, mean ± std; table optimum {report['optimum']:.2f}; an oracle that reads the 10 cells "
             f"of best mean validation once each and names the highest reports {report['oracle_top10']:.2f}",
             f"{'strategy':<24}" + "".join(f"{f'n={b}':>16}" for b in budgets) + f"{'seconds':>10}"]
    for name in names:
        row = "".join(f"{cells[name, b]['mean']:>9.2f} ± {cells[name, b]['std']:<4.2f}" for b in budgets)
        lines.append(f"{name:<24}{row}{cells[name, budgets[0]]['seconds']:>10.1f}")
    lines.append(f"total {seconds:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nasjobs.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("strategies", help="compare search strategies on the NAS-Bench-201 table")
    p.add_argument("--space", default="nb201", choices=["nb201"])
    p.add_argument("--dataset", default="cifar10", choices=nb201_table.DATASETS)
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--strategies", default=None,
                   help="comma-separated (default: every registered strategy and optuna_tpe); NAME@LABEL runs NAME "
                        "with the --options given for NAME@LABEL, a variant beside the default")
    p.add_argument("--options", type=json.loads, default=None,
                   help='strategy options as JSON, e.g. \'{"bo": {"incumbent_evaluations": 1}}\' (default: each '
                        'strategy\'s defaults)')
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    q = sub.add_parser("proposals", help="milliseconds per proposal and checkpoint bytes at 100 to 10,000 trials")
    q.add_argument("--dataset", default="cifar10", choices=nb201_table.DATASETS)
    q.add_argument("--points", default="100,1000,10000", help="trial counts to measure at, comma-separated")
    q.add_argument("--window", type=int, default=50, help="proposals before each point that are timed")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--strategies", default=None, help="comma-separated (default: every registered strategy with a "
                                                      "propose/observe loop)")
    q.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    # Differentiable strategies (DARTS) train a supernet instead of proposing: the table protocol does not apply.
    discrete = [n for n in STRATEGIES.names() if not getattr(STRATEGIES.get(n), "differentiable", False)]
    if args.command == "proposals":
        return proposals_main(parser, args, discrete, argv)
    if args.budget < 1 or args.runs < 1:
        parser.error("--budget and --runs must be positive")
    names = args.strategies.split(",") if args.strategies else discrete + [OptunaTPE.name]
    for name in (n.split("@")[0] for n in names):
        if name != OptunaTPE.name and name not in discrete:
            parser.error(f"unknown or differentiable strategy {name!r}; choose from "
                         f"{', '.join(discrete + [OptunaTPE.name])}")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # many small runs: threads only contend
    started = time.perf_counter()
    report = bench_strategies(args.space, args.dataset, args.budget, args.runs, names, args.options,
                              progress=lambda line: print(line, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - started
    report["seconds"] = round(seconds, 1)
    report["meta"] = bench_meta(args, device="cpu", components=components(names, args.dataset, args.options),
                                argv=None if argv is None else [parser.prog, *argv])
    print(json.dumps(report) if args.json else format_table(report, seconds))
    return 0


def proposals_main(parser: argparse.ArgumentParser, args: argparse.Namespace, discrete: list[str],
                   argv: list[str] | None) -> int:
    try:
        points = tuple(sorted(int(n) for n in args.points.split(",")))
    except ValueError:
        parser.error("--points must be comma-separated integers")
    if not points or points[0] < 1 or points[-1] > nb201_table.NUM_ARCHS or not 1 <= args.window <= points[0]:
        parser.error(f"--points must lie in 1..{nb201_table.NUM_ARCHS} and --window in 1..the smallest point")
    names = args.strategies.split(",") if args.strategies else discrete
    for name in names:
        if name not in discrete:
            parser.error(f"unknown or differentiable strategy {name!r}; choose from {', '.join(discrete)}")
    logging.basicConfig(level=logging.WARNING)
    # A proposal is small work (a GP on a few hundred points at most): threads only contend, in torch and in BLAS.
    torch.set_num_threads(1)
    threadpool_limits(1)
    report: dict[str, Any] = {"dataset": args.dataset, "points": list(points), "window": args.window,
                              "seed": args.seed, "strategies": {},
                              "excluded": [n for n in STRATEGIES.names() if n not in discrete]}
    for name in names:
        report["strategies"][name] = row = bench_proposals(name, args.dataset, points, args.window, args.seed)
        print(f"{name}: " + ", ".join(f"{n}: {row[f'ms_{n}']} ms, {row[f'state_bytes_{n}']} B" for n in points)
              + f" ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    report["meta"] = bench_meta(args, device="cpu", components=components(names, args.dataset),
                                argv=None if argv is None else [parser.prog, *argv])
    print(json.dumps(report) if args.json else format_proposals(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
