"""Seeded random generators and their JSON-safe state, so every run can be replayed and resumed."""
from __future__ import annotations

import hashlib
import random
from typing import Any


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from parts (experiment seed, trial number, purpose), independent of PYTHONHASHSEED."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list[Any]) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))
