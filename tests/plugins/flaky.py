"""A plug-in estimator for the failure tests (NAS_PLUGINS=tests.plugins.flaky): the NAS-Bench-201 lookup, except
that some architectures fail at run time, as a network that runs out of memory would."""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from nasjobs.estimators import ESTIMATORS
from nasjobs.estimators.base import EpochHook, EvalResult
from nasjobs.estimators.benchmark import BenchmarkConfig, BenchmarkEstimator
from nasjobs.options import option


@dataclass(frozen=True)
class FlakyConfig(BenchmarkConfig):
    fail_one_in: int = option(3, "About one architecture in this many fails (by a hash of its key)", min=1,
                              max=1000)


def fails(key: str, one_in: int) -> bool:
    return zlib.crc32(key.encode()) % one_in == 0


class FlakyEstimator(BenchmarkEstimator):
    name = "flaky"
    title = "NAS-Bench-201 lookup that fails for some architectures"
    Config = FlakyConfig

    def evaluate(self, arch: Any, budget: int, *, seed: int, hook: EpochHook | None = None) -> EvalResult:
        key = self.space.to_str(arch)
        if fails(key, self.config.fail_one_in):
            raise RuntimeError(f"injected fault for {key}")
        return super().evaluate(arch, budget, seed=seed, hook=hook)


if "flaky" not in ESTIMATORS:
    ESTIMATORS.register("flaky", FlakyEstimator)
