"""Benchmarks of the engine's strategies on the NAS-Bench-201 table (`python -m nasjobs.bench strategies ...`)."""
from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from nasjobs import nb201_table
from nasjobs.estimators.benchmark import BenchmarkConfig, BenchmarkEstimator
from nasjobs.options import parse_config
from nasjobs.rng import derive_seed
from nasjobs.search import MAX_REPEATED_PROPOSALS
from nasjobs.spaces import SPACES, SearchSpace
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

    def state_dict(self) -> dict[str, Any]:  # pragma: no cover - the benchmark never checkpoints
        raise NotImplementedError("optuna_tpe is a benchmark peer and is not checkpointed")

    def load_state_dict(self, state: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError("optuna_tpe is a benchmark peer and is not checkpointed")


@dataclass
class RunResult:
    """What one run named as its best after each trial (benchmark indices), with the observed values."""

    reported: list[int] = field(default_factory=list)  # after trial n (1-based): reported[n - 1]
    seconds: float = 0.0


def run_search(strategy: Strategy, space: SearchSpace, estimator: BenchmarkEstimator, budget: int,
               run_rng: random.Random, pick: Callable[[Strategy], Any] | None = None,
               pick_at: Sequence[int] = ()) -> RunResult:
    """The platform loop's semantics (nasjobs.search.SearchRunner) without Django or artifacts: an architecture
    already evaluated is answered with its stored value and spends no budget; after MAX_REPEATED_PROPOSALS
    repeats in a row the run stops. The reported architecture is the best observed value (the earlier trial
    wins a tie), or `pick(strategy)` at the budgets in `pick_at`."""
    started = time.perf_counter()
    observed: dict[str, float] = {}
    result = RunResult()
    best_key, best_value = None, float("-inf")
    repeats = 0
    while len(observed) < budget:
        arch = strategy.propose()
        key = space.to_str(arch)
        if key in observed:
            strategy.observe(arch, observed[key])
            repeats += 1
            if repeats >= MAX_REPEATED_PROPOSALS:
                break
            continue
        repeats = 0
        value = estimator.evaluate(arch, 200, seed=run_rng.randrange(2**31)).val_acc
        observed[key] = value
        strategy.observe(arch, value)
        if value > best_value:
            best_key, best_value = key, value
        reported = best_key
        if pick is not None and len(observed) in pick_at:
            reported = space.to_str(pick(strategy))
        result.reported.append(space.index(space.from_str(reported)))
    while len(result.reported) < budget:  # the space ran out: the last pick stands
        result.reported.append(result.reported[-1])
    result.seconds = time.perf_counter() - started
    return result


def make_strategy(name: str, space: SearchSpace, seed: int, options: dict[str, Any] | None = None) -> Strategy:
    if name == OptunaTPE.name:
        return OptunaTPE(space, None, seed)
    cls = STRATEGIES.get(name)
    return cls(space, parse_config(cls.Config, options or {}), seed)


def bench_strategies(space_name: str, dataset: str, budget: int, runs: int, strategies: list[str],
                     model_pick: bool = False, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    space = SPACES.get(space_name)()
    estimator = BenchmarkEstimator(space, None, BenchmarkConfig(table=dataset, fidelity="200", count_flops=False))
    table = nb201_table.load(dataset)
    budgets = [b for b in REPORT_BUDGETS if b <= budget] + ([budget] if budget not in REPORT_BUDGETS else [])
    results = []
    for name in strategies:
        variants = [(name, None)]
        if model_pick and hasattr(STRATEGIES.get(name) if name in STRATEGIES else None, "recommend"):
            variants.append((f"{name}:model_pick", lambda s: s.recommend()))
        for label, pick in variants:
            started = time.perf_counter()
            figures: dict[int, list[float]] = {b: [] for b in budgets}
            for run in range(runs):
                strategy = make_strategy(name, space, derive_seed("bench", run, name) % 2**31)
                # The same run seed across strategies: every strategy sees the same draws of validation seeds.
                outcome = run_search(strategy, space, estimator, budget, random.Random(derive_seed("bench", run)),
                                     pick, budgets)
                for b in budgets:
                    figures[b].append(float(table.test200[outcome.reported[b - 1]]))
            seconds = time.perf_counter() - started
            for b in budgets:
                values = figures[b]
                results.append({"strategy": label, "budget": b, "mean": round(statistics.fmean(values), 3),
                                "std": round(statistics.pstdev(values), 3), "seconds": round(seconds, 1)})
            progress(f"{label}: " + ", ".join(f"{b}: {statistics.fmean(figures[b]):.2f}" for b in budgets)
                     + f" ({seconds:.0f} s)")
    return {"space": space_name, "dataset": dataset, "runs": runs, "optimum": round(table.optimum_test200(), 2),
            "results": results}


def format_table(report: dict[str, Any], seconds: float) -> str:
    budgets = sorted({r["budget"] for r in report["results"]})
    names = list(dict.fromkeys(r["strategy"] for r in report["results"]))
    cells = {(r["strategy"], r["budget"]): r for r in report["results"]}
    lines = [f"{report['space']} on {report['dataset']}, {report['runs']} runs: test accuracy (%) of the reported "
             f"architecture, mean ± std; table optimum {report['optimum']:.2f}",
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
                   help="comma-separated (default: every registered strategy and optuna_tpe)")
    p.add_argument("--model-pick", action="store_true",
                   help="also report, for strategies with recommend(), the architecture their model names best")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.budget < 1 or args.runs < 1:
        parser.error("--budget and --runs must be positive")
    names = args.strategies.split(",") if args.strategies else STRATEGIES.names() + [OptunaTPE.name]
    for name in names:
        if name != OptunaTPE.name and name not in STRATEGIES:
            parser.error(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES.names() + [OptunaTPE.name])}")
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    report = bench_strategies(args.space, args.dataset, args.budget, args.runs, names, args.model_pick,
                              progress=lambda line: print(line, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - started
    report["seconds"] = round(seconds, 1)
    print(json.dumps(report) if args.json else format_table(report, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
