"""A trial as a lookup in the NAS-Bench-201 table: the figures a real training run would have produced."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from nasjobs import nb201_table
from nasjobs.datasets import BENCHMARK_KIND, Dataset
from nasjobs.estimators.base import EpochHook, EvalResult, Estimator
from nasjobs.options import OptionError, option
from nasjobs.spaces.base import SearchSpace
from nasjobs.spaces.nb201 import NB201, NB201Config

@dataclass(frozen=True)
class BenchmarkConfig:
    fidelity: str = option("200", "'200': one 200-epoch validation seed, drawn from the trial's seed; "
                                  "'12': the 12-epoch validation value", choices=("200", "12"))
    count_flops: bool = option(True, "Report the network's multiply-adds (from the cell, no network is built)")


class BenchmarkEstimator(Estimator):
    """NAS-Bench-201 lookup (Dong & Yang 2020) for the `nb201` space only; no network is trained.

    With fidelity "200" the observed value is the 200-epoch validation accuracy of one training seed, chosen
    with `random.Random(seed)`, so a search sees the noise a real run would. `train_seconds` is the table's
    training time on the benchmark's hardware: a simulated cost, not time spent here. The experiment's dataset
    (`nb201-cifar10`, `nb201-cifar100`, `nb201-imagenet16-120`) names the table.
    """

    name = "benchmark"
    title = "NAS-Bench-201 table lookup"
    Config = BenchmarkConfig
    trains_networks = False
    own_cost = True  # parameters from the table

    @classmethod
    def check_space(cls, config: BenchmarkConfig, space: SearchSpace) -> None:
        """The table holds the nb201 space's cells at the benchmark's own width and depth, and nothing else."""
        if not isinstance(space, NB201):
            raise ValueError(f"the benchmark estimator looks up NAS-Bench-201 figures and works only with the "
                             f"nb201 space, not the {getattr(space, 'name', type(space).__name__)} space")
        default = NB201Config()
        for option_name in ("channels", "cells"):
            value, measured = getattr(space.config, option_name), getattr(default, option_name)
            if value != measured:
                raise OptionError(f"space.{option_name}", f"the benchmark estimator's table was measured with the "
                                                         f"nb201 space's {option_name}={measured}, not {value}")

    @classmethod
    def check_dataset(cls, config: BenchmarkConfig, dataset: str, kind: str) -> None:
        if kind != BENCHMARK_KIND:
            tables = ", ".join(f"nb201-{t}" for t in nb201_table.DATASETS)
            raise ValueError(f"the benchmark estimator looks figures up in a NAS-Bench-201 table; choose one of "
                             f"the datasets {tables}, not {dataset!r}")

    def __init__(self, space: SearchSpace, dataset: Dataset, config: BenchmarkConfig,
                 device: torch.device | None = None) -> None:
        self.check_space(config, space)
        self.check_dataset(config, dataset.name, dataset.kind)
        super().__init__(space, dataset, config, device or torch.device("cpu"))
        self.table = nb201_table.load(dataset.lookup)

    def evaluate(self, arch: Any, budget: int, *, seed: int, hook: EpochHook | None = None) -> EvalResult:
        """Look `arch` up; `budget` is ignored (the table fixes the schedule; `fidelity` records it)."""
        i = self.space.index(arch)
        t = self.table
        if self.config.fidelity == "200":
            run = random.Random(seed).randrange(int(t.val200_count[i]))
            percent = float(t.val200[i, run])
            fidelity: dict[str, Any] = {"epochs": 200, "seed_run": run, "train_seconds": "simulated (table)"}
            seconds = float(t.train_time_s[i])
        else:
            percent = float(t.val12[i])
            fidelity = {"epochs": 12, "train_seconds": "simulated (table, 12/200 of the 200-epoch time)"}
            seconds = float(t.train_time_s[i]) * 12 / 200
        fidelity.update({"estimator": self.name, "table": self.table.name, "index": i})
        val_acc = percent / 100.0
        if hook is not None:
            hook(fidelity["epochs"], val_acc)
        params, flops = self.cost(arch)
        return EvalResult(val_acc=val_acc, params=params, flops=flops if self.config.count_flops else 0,
                          train_seconds=seconds, fidelity=fidelity, curve=[val_acc], state=None)

    def cost(self, arch: Any, model: torch.nn.Module | None = None) -> tuple[int, int]:
        """Parameters as the table gives them; multiply-adds by the space's formula (the table has none) at the
        input the benchmark trained on, whatever the experiment's dataset. Once per architecture."""
        key = self.space.to_str(arch)
        if key not in self.costs:
            shape, classes = nb201_table.INPUTS[self.table.name]
            _, macs = self.space.cost(arch, shape, classes)
            self.costs[key] = round(float(self.table.params_m[self.space.index(arch)]) * 1e6), macs
        return self.costs[key]

    def reference_accuracy(self, arch: Any) -> float:
        """Ground truth for calibrating this estimator: the table's 200-epoch validation accuracy, mean over the
        training seeds (fraction)."""
        i = self.space.index(arch)
        count = int(self.table.val200_count[i])
        return float(self.table.val200[i, :count].mean()) / 100.0

    def test_accuracy(self, arch: Any, state: dict[str, torch.Tensor] | None = None) -> float:
        """The table's 200-epoch test accuracy (fraction, mean over seeds); `state` is ignored, since a lookup
        has no weights (the search loop passes None)."""
        return float(self.table.test200[self.space.index(arch)]) / 100.0
