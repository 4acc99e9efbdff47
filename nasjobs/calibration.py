"""Rank agreement between a cheap estimator's figures and full training: how far an estimate can be trusted."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from scipy import stats

from nasjobs.datasets import Dataset
from nasjobs.estimators.base import Estimator
from nasjobs.estimators.train import TrainConfig, TrainEstimator
from nasjobs.rng import derive_seed
from nasjobs.spaces.base import SearchSpace

if TYPE_CHECKING:
    from nasjobs.search import TrialRecord


def rank_correlation(estimates: Sequence[float], references: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b and Spearman's rho between two paired lists of figures (higher = better in both).

    Search strategies only compare candidates, so what matters about an estimator is whether it orders them as
    full training does, not whether its numbers match. Tau-b (Kendall 1945) counts concordant minus discordant
    pairs, corrected for ties; rho is the Pearson correlation of the ranks. A constant list (an estimator that
    cannot tell candidates apart) has no defined correlation; it is reported as 0.0, i.e. no ranking skill.
    """
    if len(estimates) != len(references):
        raise ValueError(f"{len(estimates)} estimates but {len(references)} references")
    if len(estimates) < 2:
        raise ValueError("rank correlation needs at least two candidates")
    if len(set(estimates)) == 1 or len(set(references)) == 1:
        return 0.0, 0.0
    tau = stats.kendalltau(estimates, references).statistic
    rho = stats.spearmanr(estimates, references).statistic
    return (0.0 if math.isnan(tau) else float(tau)), (0.0 if math.isnan(rho) else float(rho))


@dataclass
class CalibrationResult:
    reference: str  # what the estimates were compared with
    k: int
    kendall_tau: float
    spearman_rho: float
    pairs: list[dict[str, Any]]  # number, arch, estimate, reference
    seconds: float


def calibrate(space: SearchSpace, dataset: Dataset, estimator: Estimator, trials: Sequence[TrialRecord], k: int,
              epochs: int, seed: int, device: torch.device, hook: Callable[[], None] | None = None,
              measured: Sequence[dict[str, Any]] = (), on_pair: Callable[[list[dict[str, Any]]], None] | None = None
              ) -> CalibrationResult:
    """Measure K of an experiment's candidates "fully" and rank-correlate the estimator's figures with that.

    The reference is full training from scratch (the `train` estimator for `epochs` epochs, default settings),
    or, for an estimator that knows its own ground truth (`reference_accuracy`, e.g. the benchmark table's mean
    over training seeds), that figure. The K candidates are drawn with `random.Random(seed)`.

    `hook` runs before each candidate and after each epoch (it may raise to stop); `on_pair` is given the pairs
    measured so far after each candidate, and `measured` (pairs an earlier, interrupted run gave `on_pair`) are
    reused rather than trained again: each reference is seeded by the candidate, so a resumed calibration
    measures what an uninterrupted one would have.
    """
    if len(trials) < 2 or k < 2:
        raise ValueError("calibration needs at least two evaluated candidates (k >= 2)")
    started = time.perf_counter()
    chosen = sorted(random.Random(seed).sample(list(trials), min(k, len(trials))), key=lambda t: t.number)
    if hasattr(estimator, "reference_accuracy"):
        reference = f"{estimator.name} ground truth"
        measure = lambda arch, number: estimator.reference_accuracy(arch)  # noqa: E731
    else:
        reference = f"train {epochs} epochs"
        trainer = TrainEstimator(space, dataset, TrainConfig(), device)
        measure = lambda arch, number: trainer.evaluate(  # noqa: E731
            arch, epochs, seed=derive_seed(seed, "calibration", number) % (2**31),
            hook=(lambda epoch, acc: hook()) if hook else None).val_acc
    known = {(p["number"], p["arch"]): p["reference"] for p in measured}
    pairs = []
    for trial in chosen:
        figure = known.get((trial.number, trial.arch_key))
        if figure is None:
            if hook:
                hook()
            figure = float(measure(space.from_str(trial.arch_key), trial.number))
        pairs.append({"number": trial.number, "arch": trial.arch_key, "estimate": trial.val_acc,
                      "reference": figure})
        if on_pair:
            on_pair(list(pairs))
    tau, rho = rank_correlation([p["estimate"] for p in pairs], [p["reference"] for p in pairs])
    return CalibrationResult(reference, len(pairs), tau, rho, pairs, time.perf_counter() - started)
