"""Random search: the baseline every NAS method must beat."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from nasjobs.options import option
from nasjobs.rng import rng_state, set_rng_state
from nasjobs.spaces.base import SearchSpace
from nasjobs.strategies.base import Observed, Strategy


@dataclass(frozen=True)
class RandomSearchConfig:
    no_repeats: bool = option(True, "Never propose an architecture twice")
    max_attempts: int = option(1000, "Samples tried to find an unseen architecture", min=1, max=1_000_000)


class RandomSearch(Strategy):
    """Uniform sampling from the space (Li & Talwalkar 2019, "Random search and reproducibility for NAS").

    With `no_repeats`, samples already proposed are redrawn, up to `max_attempts` times. Every proposal is
    either evaluated or a repeat of an evaluated architecture, so what was proposed is what the trials hold: the
    checkpoint keeps only the random state.
    """

    name = "random"
    title = "Random search"
    Config = RandomSearchConfig

    def __init__(self, space: SearchSpace, config: RandomSearchConfig, seed: int) -> None:
        super().__init__(space, config, seed)
        self.rng = random.Random(seed)
        self.seen: set[str] = set()

    def propose(self) -> Any:
        arch = self.space.sample(self.rng)
        if self.config.no_repeats:
            for _ in range(self.config.max_attempts - 1):
                if self.space.to_str(arch) not in self.seen:
                    break
                arch = self.space.sample(self.rng)
        self.seen.add(self.space.to_str(arch))
        return arch

    def observe(self, arch: Any, value: float) -> None:
        pass  # random search learns nothing from results

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Observed] = ()) -> None:
        set_rng_state(self.rng, state["rng"])
        self.seen = {o.key for o in history}
