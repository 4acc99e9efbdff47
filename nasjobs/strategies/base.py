"""The ask/tell search-strategy interface."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from nasjobs.spaces.base import SearchSpace


@dataclass(frozen=True)
class Observed:
    """An architecture a strategy has been told about, as the experiment's trials record it: its key and every
    value observed for it (the first evaluation, then each re-evaluation), in order."""

    key: str
    readings: tuple[float, ...]


class Strategy(ABC):
    """Decides which architecture to evaluate next. Never touches the database.

    `propose()` returns an architecture of `space`; `observe(arch, value)` reports its estimated quality
    (higher is better). `state_dict()` is JSON-serialisable and, with the history the trials already hold,
    restores the strategy exactly, random state included, so a resumed search proposes what an uninterrupted
    one would have. The checkpoint is rewritten after every trial, so it keeps only what the trials cannot
    give back (random state, counters, a bounded population): `load_state_dict(state, history)` gets every
    architecture observed so far, in the order first observed, from the trials.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    Config: ClassVar[type]
    # False: proposing an evaluated architecture again costs nothing and `observe` gets its recorded mean.
    # True: it is evaluated again (a fresh seed), costs one evaluation of the budget, `observe` gets the new value,
    # and the trial's figure becomes the mean of its evaluations (an honest figure for a noisy estimate).
    # Read before every proposal, so a strategy may turn it on for a phase (a property).
    reevaluates: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, config: Any, seed: int) -> None:
        self.space = space
        self.config = config
        self.seed = seed

    def set_budget(self, evaluations: int) -> None:
        """Told by the search loop before the first proposal: the experiment's evaluation budget, where the loop
        re-evaluates on request. Strategies that plan their end (a final race) keep it; the default ignores it."""

    @abstractmethod
    def propose(self) -> Any: ...

    @abstractmethod
    def observe(self, arch: Any, value: float) -> None: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any], history: Sequence[Observed] = ()) -> None:
        """Restore the checkpoint `state`; `history` is what the strategy had observed when it was taken."""
