"""Deployment limits of a search: networks over a parameter or multiply-add limit are skipped, never trained."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# How many proposals in a row may be over the limits before the search fails: the limits then exclude (nearly)
# every architecture the strategy proposes. At 1,000, a limit that 1% of the space meets fails a search by chance
# with probability 0.99^1000, about 4e-5; a skip costs a cost count (microseconds by a space's formula, a few
# milliseconds on the meta device), so reaching it costs seconds, never a training.
MAX_SKIPPED_IN_A_ROW = 1000

LIMIT_FIELDS = ("max_params", "max_macs")
LIMIT_RANGE = (1, 10**15)


@dataclass(frozen=True)
class Limits:
    """What a network may cost to be deployed: at most `max_params` parameters and `max_macs` multiply-adds for one
    input (None: no limit), counted as the trials' `params` and `flops` are."""

    max_params: int | None = None
    max_macs: int | None = None

    @property
    def active(self) -> bool:
        return self.max_params is not None or self.max_macs is not None

    def excess(self, params: int, macs: int) -> list[str]:
        """What a network of `params` and `macs` is over, as phrases ([] when it fits)."""
        over = []
        if self.max_params is not None and params > self.max_params:
            over.append(f"{params:,} parameters > max_params {self.max_params:,}")
        if self.max_macs is not None and macs > self.max_macs:
            over.append(f"{macs:,} MACs > max_macs {self.max_macs:,}")
        return over

    def describe(self) -> str:
        parts = [f"{name} {value:,}" for name, value in (("max_params", self.max_params),
                                                         ("max_macs", self.max_macs)) if value is not None]
        return ", ".join(parts) or "no limits"


@dataclass
class Gate:
    """The planner's check of each new proposal against the limits, and its count of the proposals skipped.

    `cost(arch)` gives an architecture's parameters and multiply-adds as its trial would record them; the figures
    are cached per architecture (a strategy may propose one again). `skipped` counts every proposal refused,
    `in_a_row` those since the last proposal that became a trial; after `max_in_a_row` in a row the gate says the
    search cannot go on (`impossible`), with the smallest figures it saw. Its counters are part of the planner's
    checkpoint, so a restored planner counts on exactly where it stopped."""

    limits: Limits
    cost: Callable[[Any], tuple[int, int]]
    max_in_a_row: int = MAX_SKIPPED_IN_A_ROW
    space_name: str = "search"
    skipped: int = 0
    in_a_row: int = 0
    fewest_params: int | None = None
    fewest_macs: int | None = None
    costs: dict[str, tuple[int, int]] = field(default_factory=dict)

    def refuses(self, arch: Any, key: str) -> bool:
        """Whether `arch` (whose key is `key`) is over the limits; a refusal is counted."""
        figures = self.costs.get(key)
        if figures is None:
            figures = self.costs[key] = self.cost(arch)
        params, macs = figures
        if not self.limits.excess(params, macs):
            return False
        self.skipped += 1
        self.in_a_row += 1
        self.fewest_params = params if self.fewest_params is None else min(self.fewest_params, params)
        self.fewest_macs = macs if self.fewest_macs is None else min(self.fewest_macs, macs)
        return True

    def admitted(self) -> None:
        """A proposal became a trial: the run of refusals ends."""
        self.in_a_row = 0

    @property
    def impossible(self) -> str | None:
        """Why the search cannot go on (`max_in_a_row` proposals in a row refused), or None."""
        if self.in_a_row < self.max_in_a_row:
            return None
        return (f"{self.in_a_row:,} proposals in a row were over the deployment limits ({self.limits.describe()}): "
                f"the limits exclude (nearly) every architecture of the {self.space_name} space the strategy "
                f"proposes; the smallest network proposed over them had {self.fewest_params:,} parameters, the "
                f"cheapest {self.fewest_macs:,} MACs")

    def state(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row, "fewest_params": self.fewest_params,
                "fewest_macs": self.fewest_macs}

    def load(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.skipped, self.in_a_row = int(state.get("skipped", 0)), int(state.get("in_a_row", 0))
        self.fewest_params, self.fewest_macs = state.get("fewest_params"), state.get("fewest_macs")
