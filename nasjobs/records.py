"""What a search records: its trials, the order they were told to the strategy, and the bookkeeping over them."""
from __future__ import annotations

import bisect
import inspect
from dataclasses import dataclass, field
from typing import Any, Iterable

from nasjobs.strategies import Observed

# How many proposals in a row may repeat evaluated architectures before the space counts as exhausted.
MAX_REPEATED_PROPOSALS = 1000

# A trial's status: proposed and waiting for a worker, being evaluated, evaluated, or failed with an error.
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
IN_FLIGHT = (PENDING, RUNNING)
AGAIN = "again"  # the job of a trial evaluated once more (a re-evaluation), rather than for the first time
RUNG = "rung"  # the job of a trial promoted to its bracket's next rung (successive halving): trained on


class SearchCancelled(Exception):
    """Raised by a store's heartbeat when the experiment was cancelled; the loop stops where it is."""


@dataclass
class TrialRecord:
    number: int
    arch_key: str
    arch_display: str
    val_acc: float
    params: int
    flops: int
    train_seconds: float
    fidelity: dict[str, Any]
    curve: list[float]
    weights_path: str | None = None
    estimator: str = ""
    search_seconds: float = 0.0  # search time when this trial finished, summed over resumptions
    proposals: int = 0  # proposals made so far, repeats of evaluated architectures included
    distance_to_incumbent: int | None = None  # edit distance to the best architecture known when proposed
    evaluations: list[float] = field(default_factory=list)  # every observed value; val_acc is their mean
    status: str = DONE
    job: str = ""  # while in flight: "" for its first evaluation, AGAIN for one more
    told: int | None = None  # its place in the order results were told to the strategy (None: not told)
    error: str = ""  # why it failed
    loss_curve: list[float | None] = field(default_factory=list)  # mean training loss per epoch, beside `curve`
    resumed_from_epoch: int | None = None  # its latest evaluation continued its checkpoint at this epoch (None: from 0)

    def __post_init__(self) -> None:
        if not self.evaluations and self.status == DONE:
            self.evaluations = [self.val_acc]

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT


def best_trial(trials: list[TrialRecord]) -> TrialRecord:
    """Highest validation accuracy; the earlier trial wins a tie."""
    return max(trials, key=lambda t: (t.val_acc, -t.number))


def evaluations_done(trials: list[TrialRecord]) -> int:
    """Budget spent: each evaluation counts, re-evaluations of an architecture included."""
    return sum(len(t.evaluations) for t in trials)


def observed_history(trials: Iterable[TrialRecord]) -> list[Observed]:
    """What a strategy had been told when these trials were recorded, in the order given: each one's architecture
    and readings. A strategy's checkpoint holds none of it (`Strategy.load_state_dict`)."""
    return [Observed(t.arch_key, tuple(t.evaluations)) for t in trials]


def restore_strategy(strategy: Any, state: dict[str, Any], history: list[Observed]) -> None:
    """`strategy.load_state_dict(state, history)`; a strategy written before strategies read their history from the
    trials (a package's own, `load_state_dict(state)`) gets its state alone."""
    if len(inspect.signature(strategy.load_state_dict).parameters) >= 2:
        strategy.load_state_dict(state, history)
    else:
        strategy.load_state_dict(state)


def promotion(cohort: list[int], trials: list[TrialRecord], rung: int, eta: int) -> tuple[list[int], list[int]]:
    """Successive halving's cut after rung `rung` - 1: the best floor(n/eta) of `cohort` by that rung's figure
    (at least one; the earlier trial first on a tie) go on to rung `rung`, the rest stop. Both best first."""
    ranked = sorted(cohort, key=lambda n: (-trials[n].fidelity["rungs"][rung - 1]["val_acc"], n))
    survivors = max(1, len(cohort) // eta)
    return ranked[:survivors], ranked[survivors:]


def bracket_told_order(members: list[int], trials: list[TrialRecord], rungs: int, eta: int) -> list[int]:
    """The order in which a finished bracket of `rungs` rungs told its `members` to the strategy: the losers of
    each cut, best first, then the last survivors (as `SearchRunner._run_brackets` does)."""
    told, cohort = [], list(members)
    for rung in range(1, rungs):
        cohort, losers = promotion(cohort, trials, rung, eta)
        told += losers
    return told + cohort


def top_k_numbers(trials: list[TrialRecord], k: int) -> list[int]:
    ranked = sorted(trials, key=lambda t: (-t.val_acc, t.number))
    return [t.number for t in ranked[:k]]


class Leaderboard:
    """The trials best first (highest mean, the earlier first on a tie, as `best_trial` and `top_k_numbers`
    rank them) and the evaluations spent, kept up to date as trials arrive or are re-evaluated: the loop's
    bookkeeping after a trial is a binary search, not a sort of every trial (at 10,000 trials, milliseconds)."""

    def __init__(self, trials: list[TrialRecord]) -> None:
        self.order = sorted((-t.val_acc, t.number) for t in trials)
        self.evaluations = evaluations_done(trials)

    def add(self, trial: TrialRecord) -> None:
        bisect.insort(self.order, (-trial.val_acc, trial.number))
        self.evaluations += len(trial.evaluations)

    def reevaluated(self, trial: TrialRecord, before: float, evaluations: int = 1) -> None:
        """`trial` got `evaluations` more (0: a new figure replacing the old, as a promotion to a higher rung
        gives); its figure was `before`."""
        del self.order[bisect.bisect_left(self.order, (-before, trial.number))]
        bisect.insort(self.order, (-trial.val_acc, trial.number))
        self.evaluations += evaluations

    @property
    def best(self) -> int | None:
        return self.order[0][1] if self.order else None

    def top(self, k: int) -> list[int]:
        return [number for _, number in self.order[:k]]
