"""Regularized (aging) evolution: tournament selection, mutation of the winner, the oldest individual dies."""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from nasjobs.options import option
from nasjobs.rng import rng_state, set_rng_state
from nasjobs.spaces.base import SearchSpace
from nasjobs.strategies.base import Observed, Strategy
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

    def propose(self) -> Any:
        again = self.race.next()
        if again is not None:
            return self.space.from_str(again)
        if self.history < self.config.population:  # initialise the population at random
            return self.space.sample(self.rng)
        sample = self.rng.sample(list(self.population), self.config.sample_size)
        parent = max(sample, key=lambda individual: individual[1])
        child = self.space.from_str(parent[0])
        for _ in range(self.config.mutations):
            child = self.space.mutate(child, self.rng)
        return child

    def observe(self, arch: Any, value: float) -> None:
        key = self.space.to_str(arch)
        racing = self.race.racing
        self.race.observe(key, float(value), racing)
        if racing:  # the search is over: readings feed the race only
            return
        self.population.append((key, float(value)))
        self.history += 1
        if len(self.population) > self.config.population:
            self.population.popleft()  # the oldest dies

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng), "population": [list(p) for p in self.population],
                "history": self.history}

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Observed] = ()) -> None:
        set_rng_state(self.rng, state["rng"])
        self.population = deque((key, float(value)) for key, value in state["population"])
        self.history = int(state["history"])
        self.race.restore(history)
