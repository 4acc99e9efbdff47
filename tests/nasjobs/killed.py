"""A store that dies like a killed worker, and a benchmark experiment run into it, for the resume tests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nasjobs.artifacts import ArtifactStore
from nasjobs.bench import bench_spec
from nasjobs.search import MemoryStore, SearchRunner, TrialRecord


@dataclass
class KilledStore(MemoryStore):
    """Dies after `survive` more evaluations are recorded, as a killed worker would."""

    survive: int = 0

    def record_trial(self, trial: TrialRecord, strategy_state: dict[str, Any], kept: list[int]) -> None:
        super().record_trial(trial, strategy_state, kept)
        self.survive -= 1
        if self.survive == 0:
            raise RuntimeError("worker killed")


def run_bench_experiment(name: str, options: dict[str, Any] | None, store: MemoryStore, tmp_path: Any,
                         budget: int = 40) -> list[tuple[str, list[float]]]:
    """Run (or resume) strategy `name` on the NB-201 CIFAR-10 lookup, seed 11, into `store`; a kill ends it
    quietly. Returns each trial's architecture and readings."""
    spec = bench_spec(name, "cifar10", budget, seed=11, options=options)
    try:
        SearchRunner(spec, store, ArtifactStore(tmp_path, 1), torch.device("cpu")).run()
    except RuntimeError:
        pass
    return [(t.arch_key, list(t.evaluations)) for t in store.trials]
