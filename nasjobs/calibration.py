"""Rank agreement between a cheap estimator's figures and full training: how far an estimate can be trusted."""
from __future__ import annotations

import math
from typing import Sequence

from scipy import stats


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
