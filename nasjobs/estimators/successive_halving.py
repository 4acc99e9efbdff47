"""Multi-fidelity estimation: successive halving and Hyperband, promoting the best trials to more epochs."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nasjobs.estimators.base import EpochHook, EvalResult
from nasjobs.estimators.train import TrainConfig, TrainEstimator
from nasjobs.options import option
from nasjobs.training import Trainer


@dataclass(frozen=True)
class SuccessiveHalvingConfig(TrainConfig):
    min_epochs: int = option(1, "Epochs every trial of a bracket gets first (the lowest rung)", min=1, max=10_000)
    eta: int = option(3, "Keep the best 1/eta of a rung; they train eta times longer", min=2, max=100)
    bracket_size: int = option(9, "Architectures that start a bracket together", min=2, max=100_000)


@dataclass(frozen=True)
class HyperbandConfig(TrainConfig):
    min_epochs: int = option(1, "Smallest epoch budget of any rung", min=1, max=10_000)
    eta: int = option(3, "Keep the best 1/eta of a rung; they train eta times longer", min=2, max=100)


def geometric_rungs(min_epochs: int, max_epochs: int, eta: int) -> list[int]:
    """Epoch budgets min, min*eta, min*eta^2, ... ending exactly at max_epochs."""
    rungs, epochs = [], min(min_epochs, max_epochs)
    while epochs < max_epochs:
        rungs.append(epochs)
        epochs *= eta
    rungs.append(max_epochs)
    return rungs


def rung_checkpoint(workdir: Path, number: int) -> Path:
    """Where trial `number` keeps its resumable checkpoint between rungs."""
    return workdir / f"rung-checkpoint-{number:05d}.pt"


class SuccessiveHalvingEstimator(TrainEstimator):
    """Successive halving (Jamieson & Talwalkar 2016; as the inner loop of Li et al. 2018, Algorithm 1): a
    bracket of `bracket_size` trials trains for `min_epochs`; the best floor(n/eta) of each rung continue to eta
    times more epochs, resuming from their own checkpoint (weights, optimizer, schedule, data order), until the
    experiment's epochs. Every rung's figure is kept on the trial; the strategy sees a trial's last rung.

    The learning-rate schedule of every trial spans the full epochs, so a promoted trial continues exactly as if
    it had never stopped, and one that reaches the top rung equals a plain `train` run.
    """

    name = "successive_halving"
    title = "Successive halving"
    Config = SuccessiveHalvingConfig
    multi_fidelity = True

    @classmethod
    def brackets(cls, config: Any, index: int, max_epochs: int) -> tuple[int, list[int]]:
        """The size and the rungs (epochs) of bracket number `index` (no dataset needed: a planner asks)."""
        return config.bracket_size, geometric_rungs(config.min_epochs, max_epochs, config.eta)

    def bracket(self, index: int, max_epochs: int) -> tuple[int, list[int]]:
        return self.brackets(self.config, index, max_epochs)

    def checkpoint_path(self, number: int) -> Path:
        if self.workdir is None:
            raise RuntimeError("successive halving keeps checkpoints in the experiment's work folder; none was set")
        return rung_checkpoint(self.workdir, number)

    def train_to(self, arch: Any, number: int, epochs: int, total_epochs: int, seed: int,
                 hook: EpochHook | None = None) -> EvalResult:
        """Train trial `number` up to `epochs` (of a schedule of `total_epochs`), continuing its checkpoint."""
        model = self._build(arch, seed)
        params, flops = self.cost(arch, model)
        trainer = Trainer(model, self.dataset.train, self.dataset.val, self._settings(), total_epochs, seed,
                          self.device)
        path = self.checkpoint_path(number)
        if path.exists():
            trainer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        resumed_from = trainer.epoch
        started = time.perf_counter()
        curve = trainer.run(epochs, hook)
        seconds = time.perf_counter() - started
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(trainer.state_dict(), tmp)
        tmp.replace(path)
        return self.mark_chance_level(EvalResult(
            val_acc=curve[-1], params=params, flops=flops, train_seconds=seconds,
            fidelity={"estimator": self.name, "epochs": epochs, "resumed_from_epoch": resumed_from}, curve=curve,
            state=trainer.state_dict()["model"], loss_curve=list(trainer.loss_curve)))


class HyperbandEstimator(SuccessiveHalvingEstimator):
    """Hyperband (Li et al. 2018, Algorithm 1): successive-halving brackets s = s_max, ..., 0 in turn, trading many
    trials at few epochs against few at many; with R = max/min epochs, s_max = floor(log_eta R), bracket s starts
    n = ceil((s_max + 1) eta^s / (s + 1)) trials at R eta^-s units of `min_epochs`."""

    name = "hyperband"
    title = "Hyperband"
    Config = HyperbandConfig

    @classmethod
    def brackets(cls, config: Any, index: int, max_epochs: int) -> tuple[int, list[int]]:
        eta, unit = config.eta, min(config.min_epochs, max_epochs)
        big_r = max_epochs / unit
        s_max = int(math.floor(math.log(big_r, eta) + 1e-9))
        s = s_max - index % (s_max + 1)
        n = math.ceil((s_max + 1) * eta**s / (s + 1))
        rungs = sorted({max(1, min(max_epochs, round(unit * big_r * eta ** (i - s)))) for i in range(s + 1)})
        if rungs[-1] != max_epochs:
            rungs.append(max_epochs)
        return max(n, 1), rungs
