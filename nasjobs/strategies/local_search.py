"""Local search: steepest ascent over the space's neighbours, restarting at random from each local optimum."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from nasjobs.options import option
from nasjobs.rng import rng_state, set_rng_state
from nasjobs.spaces.base import SearchSpace
from nasjobs.strategies.base import Observed, Outstanding, Strategy
from nasjobs.strategies.race import FinalRace, Racing, race_options


@dataclass(frozen=True)
class LocalSearchConfig:
    initial: int = option(10, "Random architectures evaluated to pick each (re)start", min=1, max=10_000)
    max_neighbours: int = option(0, "Neighbours evaluated per step, drawn at random (0: all)", min=0, max=100_000)
    final_race: float = race_options()[0]
    race_leaders: int = race_options()[1]


class LocalSearch(Racing, Strategy):
    """White, Nolen, Ravi & Savani 2020, "Exploring the loss landscape in neural architecture search",
    Algorithm 1 (local search) with random restarts.

    Start from the best of `initial` random architectures; evaluate all of the current architecture's
    neighbours (in random order); move to the best of them if it beats the current one (steepest ascent),
    otherwise the current one is a local optimum and the search restarts from fresh random samples.
    Neighbours evaluated before are answered from the record without spending budget. The last `final_race`
    share of the budget measures the leaders again (`FinalRace`), so the reported best is not a lucky reading.

    With k parallel trials a phase's architectures are evaluated k at a time; the phase ends (the step is taken)
    only once all of them are back, as steepest ascent needs. A worker freed while the last of them are in flight
    looks ahead instead of waiting: it evaluates the next unevaluated, not yet proposed neighbour of the best
    architecture the phase has found so far, if that beats the current one (where the climb most likely goes
    next; the next phase then finds it in the record at no cost), otherwise an unseen random architecture.

    The checkpoint holds the random state, the current phase (at most one neighbourhood) and the proposals in
    flight (at most 2k, the oldest forgotten beyond: the planner may drop one and never observe it); what was
    observed comes back from the trials.
    """

    name = "local_search"
    title = "Local search"
    Config = LocalSearchConfig

    def __init__(self, space: SearchSpace, config: LocalSearchConfig, seed: int) -> None:
        super().__init__(space, config, seed)
        self.rng = random.Random(seed)
        self.values: dict[str, float] = {}  # every observed architecture
        self.queue: list[str] = []  # architectures still to propose in this phase
        self.phase = "init"  # "init": random samples; "climb": neighbours of `current`
        self.phase_keys: list[str] = []  # what this phase proposed, to pick its best when it is done
        self.current: str | None = None
        self.race = FinalRace(config.final_race, config.race_leaders)
        self.outstanding = Outstanding()

    def set_parallelism(self, k: int) -> None:
        self.outstanding.set_parallelism(k)

    def _start_phase(self) -> None:
        if self.phase == "init" or self.current is None:
            self.queue = [self.space.to_str(self.space.sample(self.rng)) for _ in range(self.config.initial)]
        else:
            neighbours = [self.space.to_str(n) for n in self.space.neighbours(self.space.from_str(self.current))]
            self.rng.shuffle(neighbours)
            if self.config.max_neighbours:
                neighbours = neighbours[:self.config.max_neighbours]
            self.queue = neighbours
        self.phase_keys = list(self.queue)

    def _end_phase(self) -> None:
        scored = [k for k in self.phase_keys if k in self.values]
        best = max(scored, key=lambda k: self.values[k]) if scored else None
        if self.phase == "init":
            self.current, self.phase = best, "climb"
        elif best is not None and self.current is not None and self.values[best] > self.values[self.current]:
            self.current = best  # steepest ascent: the best neighbour, if it improves
        else:  # a local optimum: restart
            self.current, self.phase = None, "init"

    def _waiting(self) -> bool:
        """Whether some of this phase's architectures are in flight, so it cannot be judged yet."""
        return any(k not in self.values and k in self.outstanding for k in self.phase_keys)

    def _look_ahead(self) -> str:
        """A proposal while the phase waits on its last values: see the class docstring."""
        scored = [k for k in self.phase_keys if k in self.values]
        best = max(scored, key=lambda k: self.values[k]) if scored else None
        if self.phase == "climb" and best is not None and self.current is not None \
                and self.values[best] > self.values[self.current]:
            for n in self.space.neighbours(self.space.from_str(best)):
                key = self.space.to_str(n)
                if key not in self.values and key not in self.outstanding and key not in self.phase_keys:
                    return key
        for _ in range(100):
            key = self.space.to_str(self.space.sample(self.rng))
            if key not in self.values and key not in self.outstanding:
                break
        return key

    def propose(self) -> Any:
        again = self.propose_again()
        if again is not None:
            return self.space.from_str(again)
        key = None
        while key is None:
            if self.queue:
                key = self.queue.pop(0)
                if key in self.outstanding and key not in self.values:
                    key = None  # already in flight (a look-ahead): its value is on its way
            elif self._waiting():
                key = self._look_ahead()
            else:
                if self.phase_keys:
                    self._end_phase()
                self._start_phase()
        self.note_proposal(key)
        return self.space.from_str(key)

    def observe(self, arch: Any, value: float) -> None:
        key = self.space.to_str(arch)
        racing = self.observed_reevaluating(key)
        self.race.observe(key, float(value), racing)
        if not racing:
            self.values[key] = float(value)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng), "queue": list(self.queue), "phase": self.phase,
                "phase_keys": list(self.phase_keys), "current": self.current,
                "outstanding": self.outstanding.state()}

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Observed] = ()) -> None:
        set_rng_state(self.rng, state["rng"])
        # Before the race every value told is an architecture's first reading (a repeat is answered with it).
        self.values = {o.key: float(o.readings[0]) for o in history}
        self.queue = list(state["queue"])
        self.phase = state["phase"]
        self.phase_keys = list(state["phase_keys"])
        self.current = state["current"]
        self.outstanding.load(state.get("outstanding", ()))
        self.race.restore(history)
