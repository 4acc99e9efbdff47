"""The ask/tell search-strategy interface."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

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

    @classmethod
    def check_space(cls, config: Any, space: SearchSpace) -> None:
        """Raise ValueError naming the conflict if this strategy, with `config`, cannot search `space` (an
        `OptionError` whose key is `component.option` points at the option to change).

        Called when an experiment is submitted, so an impossible combination is a form error, not a failed run.
        """

    def set_budget(self, evaluations: int) -> None:
        """Told by the search loop before the first proposal: the experiment's evaluation budget, where the loop
        re-evaluates on request. Strategies that plan their end (a final race) keep it; the default ignores it."""

    def set_parallelism(self, k: int) -> None:
        """Told once after construction and after every restore, before any proposal: up to `k` trials run at once.
        `propose()` may then be called up to `k` times before any `observe()`; the values arrive in any order,
        interleaved with further proposals, and some proposals are never observed (the planner drops a duplicate
        of an architecture in flight). A strategy that must know what is in flight keeps it in its checkpoint,
        bounded (`Outstanding`). The default ignores it: a strategy that learns nothing from the order, or runs as
        one task, needs nothing more."""

    @abstractmethod
    def propose(self) -> Any: ...

    @abstractmethod
    def observe(self, arch: Any, value: float) -> None: ...

    def skipped(self, arch: Any, value: float | None) -> None:
        """The planner did not evaluate `arch`, which `propose()` returned: its network is over the experiment's
        deployment limits (`nasjobs.constraints`), and it will never be observed. `value` is what the experiment's
        failure policy tells of a failed trial (the worst figure so far under `worst`), None when it tells nothing.

        A skipped proposal is in no trial, so the history a restore gives back never holds it: whatever a strategy
        learns here must live in its checkpoint. By default it is only forgotten among the proposals in flight
        (`outstanding`, where the strategy keeps one), so a strategy that tracks them (a population filling up,
        a constant liar) does not wait for it; nothing is learnt, and an evolution's population holds trained
        networks only. A strategy that can learn from it without the history (REINFORCE's controller) or keeps
        a bounded memory of it (`bo`) overrides this."""
        outstanding = getattr(self, "outstanding", None)
        if isinstance(outstanding, Outstanding):
            outstanding.take(self.space.to_str(arch))

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any], history: Sequence[Observed] = ()) -> None:
        """Restore the checkpoint `state`; `history` is what the strategy had observed when it was taken."""


class Outstanding:
    """Proposals made and not yet observed, oldest first, each with what its strategy needs to know when the value
    arrives (a JSON-serialisable note). Once the parallelism k is told, at most 2k are kept: a proposal the
    planner discards is never observed, so beyond the bound the oldest is forgotten rather than waited for. Until
    then nothing is forgotten: the loops that do not tell it observe every proposal in the end (one trial at a
    time, each before the next proposal, so the list is empty at proposal time; a successive-halving bracket,
    once its members are ranked)."""

    def __init__(self) -> None:
        self.bound: int | None = None
        self.entries: list[tuple[str, Any]] = []

    def set_parallelism(self, k: int) -> None:
        self.bound = 2 * max(1, int(k))
        self._trim()

    def add(self, key: str, note: Any = None) -> None:
        self.entries.append((key, note))
        self._trim()

    def take(self, key: str) -> tuple[bool, Any]:
        """`key`'s value came: forget every proposal of it (the loop runs no architecture twice at once, so the
        others were duplicates it dropped). Returns whether there was one, and the oldest one's note."""
        notes = [note for k, note in self.entries if k == key]
        self.entries = [(k, note) for k, note in self.entries if k != key]
        return (True, notes[0]) if notes else (False, None)

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.entries)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(list(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> list[str]:
        return [k for k, _ in self.entries]

    def state(self) -> list[list[Any]]:
        return [[k, note] for k, note in self.entries]

    def load(self, state: Sequence[Sequence[Any]]) -> None:
        self.entries = [(str(k), note) for k, note in state]
        self._trim()

    def _trim(self) -> None:
        if self.bound is not None:
            del self.entries[:max(0, len(self.entries) - self.bound)]
