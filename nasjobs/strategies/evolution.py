"""Regularized (aging) evolution: tournament selection, mutation of the winner, the oldest individual dies."""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from nasjobs.options import option
from nasjobs.rng import rng_state, set_rng_state
from nasjobs.spaces.base import SearchSpace
from nasjobs.strategies.base import Observed, Outstanding, Strategy
from nasjobs.strategies.race import FinalRace, Racing, race_options


@dataclass(frozen=True)
class EvolutionConfig:
    population: int = option(20, "Population size P (the first P proposals are random)", min=2, max=10_000)
    sample_size: int = option(5, "Tournament size S: individuals drawn to pick a parent", min=1, max=10_000)
    mutations: int = option(1, "Mutations applied to the tournament winner to make a child", min=1, max=100)
    final_race: float = race_options()[0]
    race_leaders: int = race_options()[1]

    def __post_init__(self) -> None:
        if self.sample_size > self.population:
            raise ValueError("the tournament size S cannot exceed the population P")


class RegularizedEvolution(Racing, Strategy):
    """Real et al. 2019, "Regularized evolution for image classifier architecture search", Algorithm 1.

    The population is a queue: P random architectures first; then each cycle draws S individuals uniformly,
    mutates the best of them (the space's `mutate`, `mutations` times) and, once the child's value is observed,
    appends it and removes the oldest individual. Removing the oldest rather than the worst is the
    "regularization": an architecture survives only by having good children.

    With k parallel trials it runs as the paper's experiments did, on many asynchronous workers: a free worker
    runs the next tournament at once on the population as it stands, and each value, whenever it comes
    back, is one cycle's child. While the population fills, the random samples in flight count towards its P, so
    the search draws P random architectures as Algorithm 1 does, not P plus the k - 1 that would start before
    the P-th comes back; a worker freed before S of them are back has no tournament to run yet and samples at
    random too (with k < P - S + 2, never). The checkpoint holds these proposals in flight (at most 2k, the
    oldest forgotten beyond: the planner may drop one and never observe it).

    Not in the paper: the last `final_race` share of the budget measures the leaders again (`FinalRace`), so the
    architecture the experiment reports is not the one that drew the luckiest validation reading.

    The checkpoint holds the random state and the population (at most P individuals); the race's readings come
    back from the trials.
    """

    name = "evolution"
    title = "Regularized evolution"
    Config = EvolutionConfig

    def __init__(self, space: SearchSpace, config: EvolutionConfig, seed: int) -> None:
        super().__init__(space, config, seed)
        self.rng = random.Random(seed)
        self.population: deque[tuple[str, float]] = deque()  # (architecture key, value), oldest first
        self.history = 0  # individuals added so far
        self.race = FinalRace(config.final_race, config.race_leaders)
        self.outstanding = Outstanding()

    def set_parallelism(self, k: int) -> None:
        self.outstanding.set_parallelism(k)

    def propose(self) -> Any:
        again = self.propose_again()
        if again is not None:
            return self.space.from_str(again)
        random_in_flight = sum(1 for _, note in self.outstanding if note.get("random"))
        filling = self.history + random_in_flight < self.config.population
        if filling or len(self.population) < self.config.sample_size:  # initialise the population at random
            child = self.space.sample(self.rng)
        else:
            sample = self.rng.sample(list(self.population), self.config.sample_size)
            parent = max(sample, key=lambda individual: individual[1])
            child = self.space.from_str(parent[0])
            for _ in range(self.config.mutations):
                child = self.space.mutate(child, self.rng)
        self.note_proposal(self.space.to_str(child), random=filling)
        return child

    def observe(self, arch: Any, value: float) -> None:
        key = self.space.to_str(arch)
        racing = self.observed_reevaluating(key)
        self.race.observe(key, float(value), racing)
        if racing:  # the search is over: readings feed the race only
            return
        self.population.append((key, float(value)))
        self.history += 1
        if len(self.population) > self.config.population:
            self.population.popleft()  # the oldest dies

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng), "population": [list(p) for p in self.population],
                "history": self.history, "outstanding": self.outstanding.state()}

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Observed] = ()) -> None:
        set_rng_state(self.rng, state["rng"])
        self.population = deque((key, float(value)) for key, value in state["population"])
        self.history = int(state["history"])
        self.outstanding.load(state.get("outstanding", ()))
        self.race.restore(history)
