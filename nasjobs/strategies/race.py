"""A final race: the end of the budget spent measuring the leading architectures again."""
from __future__ import annotations

import math
from typing import Any, Sequence

from nasjobs.options import option
from nasjobs.strategies.base import Observed, Outstanding


def race_options() -> tuple[Any, Any]:
    """The two options of a strategy that races (fresh dataclass fields for its config): `final_race`, then
    `race_leaders`."""
    return (option(0.15, "Share of the budget spent at its end measuring the leading architectures again, so a "
                         "lucky single reading is not what the experiment reports (0: no race)", min=0.0, max=0.9),
            option(5, "Leading architectures (by mean reading) the final race measures again", min=1, max=1000))


class FinalRace:
    """Best-arm identification at the end of a search, in the manner of SMAC's intensification (Hutter, Hoos &
    Leyton-Brown 2011, Procedure "Intensify") with a fixed budget.

    A noisy estimate (one training seed, one validation split) makes the highest single reading a biased pick:
    among near-equal architectures the luckiest wins. The experiment names as its best the architecture of the
    highest *mean* reading, so the last `share` of the evaluation budget is spent on the `leaders` best
    architectures by mean: each step measures again the leader with the fewest readings (the better one first
    on a tie). A lucky single reading that takes the lead is measured until its mean settles, and the final
    leader holds as many readings as the race could give it.

    The race needs the experiment's evaluation budget (`Strategy.set_budget`, called by the search loop); without
    one (a strategy used on its own, or a loop that does not re-evaluate) it never starts. A search that stops early
    (patience, time limit) never reaches it.

    It tracks what was evaluated from the strategy's `observe` calls: the first value told for an architecture
    is one evaluation; a later one counts only when the strategy was re-evaluating, since otherwise the loop
    answers a repeated proposal from its record without spending budget. Those are exactly the readings the
    experiment's trials hold, so the race is no part of a checkpoint: `restore` rebuilds it from them.
    """

    def __init__(self, share: float, leaders: int) -> None:
        self.share = share
        self.leaders = leaders
        self.budget: int | None = None
        self.readings: dict[str, list[float]] = {}  # architecture key -> its readings, in order of first reading
        self.spent = 0  # evaluations observed

    @property
    def start(self) -> int | None:
        """The evaluation after which the race begins (None: no race)."""
        if not self.budget or self.share <= 0:
            return None
        return self.budget - math.floor(self.share * self.budget)

    @property
    def racing(self) -> bool:
        start = self.start
        return start is not None and start < self.budget and self.spent >= start and len(self.readings) > 0

    def observe(self, key: str, value: float, reevaluating: bool) -> None:
        """One value told to the strategy. `reevaluating`: whether the strategy's `reevaluates` was on, i.e. the
        loop measured a repeated proposal again (one evaluation) rather than answering it from its record."""
        if key not in self.readings:
            self.readings[key] = [value]
            self.spent += 1
        elif reevaluating:
            self.readings[key].append(value)
            self.spent += 1

    def ranking(self) -> list[str]:
        """Architectures best first by mean reading; the earlier observed first on a tie (as the platform names
        its best trial)."""
        order = {k: i for i, k in enumerate(self.readings)}
        return sorted(self.readings, key=lambda k: (-sum(self.readings[k]) / len(self.readings[k]), order[k]))

    def next(self, in_flight: Sequence[str] = ()) -> str | None:
        """The architecture to measure again now, or None when the race has not begun. `in_flight`: architectures
        whose evaluation is still running (with parallel trials); they are left out, since the loop runs no
        architecture twice at once, so k free workers measure k different leaders. With every leader in flight, the
        next architecture by mean that is not is measured instead: a free worker still sharpens the ranking."""
        if not self.racing:
            return None
        busy = set(in_flight)
        ranking = self.ranking()
        top = [k for k in ranking[:self.leaders] if k not in busy] \
            or [k for k in ranking if k not in busy][:1] or ranking[:1]
        fewest = min(len(self.readings[k]) for k in top)
        return next(k for k in top if len(self.readings[k]) == fewest)

    def restore(self, history: Sequence[Observed]) -> None:
        """Rebuild the readings from the observed history (each architecture's readings, in order first observed)."""
        self.readings = {o.key: [float(v) for v in o.readings] for o in history}
        self.spent = sum(len(v) for v in self.readings.values())


class Racing:
    """Mixin for a `Strategy` that ends with the `FinalRace` it holds as `self.race`: it re-evaluates while the race
    runs, and hands the budget the loop announces to the race. List it before `Strategy` among the bases.

    With parallel trials the strategy notes, for each proposal in flight (`self.outstanding`), whether the loop was
    told to re-evaluate when it was made (`self.reevaluates` then): that, not the flag when its value arrives
    (other values may have started the race meanwhile), says whether the value is a new reading, as the trials
    record it. `note_proposal`, `propose_again` and `observed_reevaluating` keep this; one trial at a time, the
    two flags are the same."""

    race: FinalRace
    outstanding: Outstanding

    @property
    def reevaluates(self) -> bool:
        return self.race.racing

    def set_budget(self, evaluations: int) -> None:
        self.race.budget = evaluations

    def propose_again(self) -> str | None:
        """The leader the race measures now (noted as in flight), or None before the race."""
        key = self.race.next(self.outstanding.keys())
        if key is not None:
            self.outstanding.add(key, {"again": True})
        return key

    def note_proposal(self, key: str, **note: Any) -> None:
        """`key` was proposed now: in flight, with `note` and whether the loop re-evaluates it."""
        self.outstanding.add(key, {"again": bool(self.reevaluates), **note})

    def observed_reevaluating(self, key: str) -> bool:
        """`key`'s value came: whether the loop re-evaluated it when it was proposed (the flag now if it was not
        proposed, or was forgotten)."""
        found, note = self.outstanding.take(key)
        return bool(note["again"]) if found else bool(self.reevaluates)
