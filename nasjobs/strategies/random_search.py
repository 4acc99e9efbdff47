"""Random search: the baseline every NAS method must beat."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from nasjobs.options import option
from nasjobs.rng import rng_state, set_rng_state
from nasjobs.spaces.base import SearchSpace
from nasjobs.strategies.base import Observed, Outstanding, Strategy


@dataclass(frozen=True)
class RandomSearchConfig:
    no_repeats: bool = option(True, "Never propose an architecture twice")
    max_attempts: int = option(1000, "Samples tried to find an unseen architecture", min=1, max=1_000_000)


class RandomSearch(Strategy):
    """Uniform sampling from the space (Li & Talwalkar 2019, "Random search and reproducibility for NAS").

    With `no_repeats`, samples already observed or still in flight are redrawn, up to `max_attempts` times.
    Random search is asynchronous by nature: k parallel proposals are k independent samples. What was observed
    the trials hold; the checkpoint keeps the random state and the proposals still in flight (`Outstanding`,
    at most 2k: one the planner discards is forgotten, and may be drawn again).
    """

    name = "random"
    title = "Random search"
    Config = RandomSearchConfig

    def __init__(self, space: SearchSpace, config: RandomSearchConfig, seed: int) -> None:
        super().__init__(space, config, seed)
        self.rng = random.Random(seed)
        self.seen: set[str] = set()  # every architecture observed
        self.outstanding = Outstanding()

    def set_parallelism(self, k: int) -> None:
        self.outstanding.set_parallelism(k)

    def propose(self) -> Any:
        arch = self.space.sample(self.rng)
        if self.config.no_repeats:
            for _ in range(self.config.max_attempts - 1):
                key = self.space.to_str(arch)
                if key not in self.seen and key not in self.outstanding:
                    break
                arch = self.space.sample(self.rng)
        self.outstanding.add(self.space.to_str(arch))
        return arch

    def observe(self, arch: Any, value: float) -> None:
        key = self.space.to_str(arch)  # random search learns nothing from results, only what was tried
        self.outstanding.take(key)
        self.seen.add(key)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng), "outstanding": self.outstanding.state()}

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Observed] = ()) -> None:
        set_rng_state(self.rng, state["rng"])
        self.seen = {o.key for o in history}
        self.outstanding.load(state.get("outstanding", ()))
