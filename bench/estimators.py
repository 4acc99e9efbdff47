"""How well each cheap estimator ranks chain CNNs on digits against full training, and what it costs per candidate.

    python bench/estimators.py [--k 30] [--epochs 12] [--seed 0] [--threads 1] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

import _root  # noqa: F401  (the repository root on the path, before the project's imports)

from nasjobs.benchmeta import bench_meta
from nasjobs.calibration import rank_correlation
from nasjobs.datasets import Dataset, load_digits
from nasjobs.estimators import Estimator
from nasjobs.estimators.low_fidelity import LowFidelityConfig, LowFidelityEstimator
from nasjobs.estimators.median_stopping import MedianStoppingConfig, MedianStoppingEstimator
from nasjobs.estimators.train import TrainConfig, TrainEstimator
from nasjobs.estimators.weight_sharing import WeightSharingConfig, WeightSharingEstimator
from nasjobs.estimators.zero_cost import ZeroCostConfig, ZeroCostEstimator
from nasjobs.rng import derive_seed
from nasjobs.spaces.base import SearchSpace
from nasjobs.spaces.chain_cnn import ChainCNN, ChainCNNConfig

log = logging.getLogger("bench.estimators")
CPU = torch.device("cpu")
REFERENCE_SEEDS = 2  # full training is itself noisy; averaging two seeds tames the reference


@dataclass(frozen=True)
class Contender:
    name: str
    make: Callable[[SearchSpace, Dataset, int], Estimator]  # (space, data, reference epochs); may raise ValueError


CONTENDERS = (
    Contender("low_fidelity:epochs=1/4",
              lambda s, d, e: LowFidelityEstimator(s, d, LowFidelityConfig(epoch_fraction=0.25), CPU)),
    Contender("low_fidelity:data=1/2",
              lambda s, d, e: LowFidelityEstimator(s, d, LowFidelityConfig(epoch_fraction=1.0, data_fraction=0.5), CPU)),
    Contender("median_stopping", lambda s, d, e: MedianStoppingEstimator(s, d, MedianStoppingConfig(), CPU)),
    Contender("zero_cost:synflow", lambda s, d, e: ZeroCostEstimator(s, d, ZeroCostConfig(proxy="synflow"), CPU)),
    Contender("zero_cost:grad_norm", lambda s, d, e: ZeroCostEstimator(s, d, ZeroCostConfig(proxy="grad_norm"), CPU)),
    Contender("zero_cost:naswot", lambda s, d, e: ZeroCostEstimator(s, d, ZeroCostConfig(proxy="naswot"), CPU)),
    # SPOS trains the supernet longer than one network, since each path sees a share of the steps: here 8 times the
    # reference's epochs, once for all K candidates (its cost is spread over them).
    Contender("weight_sharing", lambda s, d, e: WeightSharingEstimator(s, d, WeightSharingConfig(supernet_epochs=8 * e),
                                                                      CPU)),
)


def sample_distinct(space: SearchSpace, k: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    found: dict[str, Any] = {}
    for _ in range(1000 * k):
        arch = space.sample(rng)
        found.setdefault(space.to_str(arch), arch)
        if len(found) == k:
            break
    return list(found.values())


def timed_figures(estimator: Estimator, archs: list[Any], epochs: int, seeds: list[int]) -> tuple[list[float], float]:
    """Each candidate's figure, in order, and the mean wall-clock seconds per candidate (build included)."""
    figures, started = [], time.perf_counter()
    for i, (arch, seed) in enumerate(zip(archs, seeds)):
        figures.append(estimator.evaluate(arch, epochs, seed=seed).val_acc)
        log.debug("%s %d/%d", type(estimator).__name__, i + 1, len(archs))
    return figures, (time.perf_counter() - started) / len(archs)


def run(k: int, epochs: int, seed: int) -> dict[str, Any]:
    space, dataset = ChainCNN(ChainCNNConfig()), load_digits()
    archs = sample_distinct(space, k, derive_seed(seed, "architectures"))
    seeds = [[derive_seed(seed, "train", i, r) % 2**31 for i in range(len(archs))] for r in range(REFERENCE_SEEDS)]
    reference = TrainEstimator(space, dataset, TrainConfig(), CPU)
    runs, costs = [], []
    for r in range(REFERENCE_SEEDS):
        log.info("reference: training %d architectures for %d epochs (seed %d of %d)", len(archs), epochs, r + 1,
                 REFERENCE_SEEDS)
        figures, cost = timed_figures(reference, archs, epochs, seeds[r])
        runs.append(figures)
        costs.append(cost)
    truth = [statistics.fmean(values) for values in zip(*runs)]
    ref_cost = statistics.fmean(costs)  # of one training run, the cost a search would pay per candidate
    seed_tau, seed_rho = rank_correlation(runs[0], runs[1])
    results, skipped = [], []
    used: dict[str, Any] = {"space": {"name": space.name, "config": space.config},
                            "reference": {"estimator": reference.name, "config": reference.config}}
    for contender in CONTENDERS:
        try:
            estimator = contender.make(space, dataset, epochs)
        except ValueError as exc:
            skipped.append({"estimator": contender.name, "reason": str(exc)})
            continue
        log.info("%s", contender.name)
        used[contender.name] = {"estimator": estimator.name, "config": estimator.config}
        figures, cost = timed_figures(estimator, archs, epochs, seeds[0])
        tau, rho = rank_correlation(figures, truth)
        results.append({"estimator": contender.name, "kendall_tau": round(tau, 4), "spearman_rho": round(rho, 4),
                        "seconds_per_candidate": round(cost, 4), "cost_vs_reference": round(cost / ref_cost, 4)})
    return {"reference": "train", "k": len(archs), "epochs": epochs, "seed": seed,
            "reference_seconds_per_candidate": round(ref_cost, 4),
            "reference_seed_agreement": {"kendall_tau": round(seed_tau, 4), "spearman_rho": round(seed_rho, 4)},
            "reference_val_acc_range": [round(min(truth), 4), round(max(truth), 4)],
            "results": results, "skipped": skipped, "components": used}


def table(report: dict[str, Any]) -> str:
    lines = [f"chain_cnn on digits, K = {report['k']} architectures (seed {report['seed']}); reference: train "
             f"{report['epochs']} epochs, mean of {REFERENCE_SEEDS} seeds, val acc "
             f"{report['reference_val_acc_range'][0]:.3f}..{report['reference_val_acc_range'][1]:.3f}, "
             f"{report['reference_seconds_per_candidate']:.3f} s per candidate per run",
             f"reference seed 1 vs seed 2: tau {report['reference_seed_agreement']['kendall_tau']:.3f}, "
             f"rho {report['reference_seed_agreement']['spearman_rho']:.3f} "
             "(how far full training agrees with itself)", "",
             f"{'estimator':<26}{'kendall tau':>12}{'spearman rho':>14}{'s/candidate':>13}{'cost vs train':>15}"]
    for r in report["results"]:
        lines.append(f"{r['estimator']:<26}{r['kendall_tau']:>12.3f}{r['spearman_rho']:>14.3f}"
                     f"{r['seconds_per_candidate']:>13.3f}{r['cost_vs_reference']:>15.3f}")
    for s in report["skipped"]:
        lines.append(f"{s['estimator']:<26}  skipped: {s['reason']}")
    quarter = next((r for r in report["results"] if r["estimator"] == "low_fidelity:epochs=1/4"), None)
    if quarter is not None:
        met = quarter["kendall_tau"] >= 0.5 and quarter["cost_vs_reference"] <= 0.25
        lines += ["", f"target (low_fidelity at 1/4 epochs: tau >= 0.5 at <= 1/4 of the cost): "
                      f"{'met' if met else 'NOT met'} (tau {quarter['kendall_tau']:.3f}, "
                      f"cost {quarter['cost_vs_reference']:.3f})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=30, help="architectures sampled (default 30)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of full training, the reference (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample and of every training (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: digits nets are too small to gain from more)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.k < 2 or args.epochs < 1:
        parser.error("--k must be at least 2 and --epochs at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    report = run(args.k, args.epochs, args.seed)
    report["meta"] = bench_meta(args, device=CPU, components=report.pop("components"),
                                argv=None if argv is None else ["python", "bench/estimators.py", *argv])
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
