"""The reference estimator: train the candidate for N epochs and measure validation accuracy."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from nasjobs.augment import Augmentation
from nasjobs.estimators.base import EpochHook, EvalResult, Estimator
from nasjobs.options import option
from nasjobs.training import SGDSettings, TrialCheckpoint, accuracy, fit, seeded_init


@dataclass(frozen=True)
class TrainConfig:
    lr: float = option(0.05, "Initial SGD learning rate (cosine-annealed to 0)", min=1e-6, max=10.0)
    momentum: float = option(0.9, "SGD Nesterov momentum", min=0.0, max=0.999)
    weight_decay: float = option(5e-4, "L2 weight decay", min=0.0, max=1.0)
    batch_size: int = option(64, "Mini-batch size", min=2, max=4096)
    grad_clip: float = option(5.0, "Clip the gradient norm to this (0: off)", min=0.0, max=1000.0)
    auxiliary_weight: float = option(0.4, "Loss weight of an auxiliary head, for spaces that have one",
                                     min=0.0, max=10.0)
    crop_padding: int = option(0, "Images: random crop after zero padding by this many pixels (0: off; CIFAR "
                                  "uses 4)", min=0, max=64)
    flip: bool = option(False, "Images: random horizontal flip")
    cutout: int = option(0, "Images: zero one random square of this side (0: off; 16 on CIFAR-10)", min=0, max=512)


class TrainEstimator(Estimator):
    """Full training for `budget` epochs with SGD; the figure is accuracy on the validation split."""

    name = "train"
    title = "Train N epochs"
    Config = TrainConfig
    marks_chance_level = True  # and so do the estimators built on it: fewer epochs, stopped early, rungs, one-shot

    def _settings(self) -> SGDSettings:
        c = self.config
        return SGDSettings(c.lr, c.momentum, c.weight_decay, c.batch_size, c.auxiliary_weight, c.grad_clip,
                           Augmentation(c.crop_padding, c.flip, c.cutout))

    @classmethod
    def check_dataset(cls, config: TrainConfig, dataset: str, kind: str) -> None:
        super().check_dataset(config, dataset, kind)
        if kind != "image" and Augmentation(config.crop_padding, config.flip, config.cutout).active:
            raise ValueError(f"crop, flip and cutout augment images; {dataset!r} is {kind} data: turn them off")

    def _build(self, arch: Any, seed: int) -> torch.nn.Module:
        ds = self.dataset
        return seeded_init(lambda: self.space.build(arch, ds.input_shape, ds.num_classes), seed)

    def evaluate(self, arch: Any, budget: int, *, seed: int, hook: EpochHook | None = None,
                 resume: TrialCheckpoint | None = None) -> EvalResult:
        model = self._build(arch, seed)
        params, flops = self.cost(arch, model)
        started = time.perf_counter()
        trainer = fit(model, self.dataset.train, self.dataset.val, budget, self._settings(), seed, self.device,
                      hook, resume=resume)
        curve = trainer.curve
        seconds = trainer.earlier_seconds + time.perf_counter() - started
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        val_acc = curve[-1] if curve else accuracy(model, self.dataset.val, self.device)
        fidelity: dict[str, Any] = {"epochs": budget, "data_fraction": 1.0}
        return self.mark_chance_level(EvalResult(val_acc=val_acc, params=params, flops=flops, train_seconds=seconds,
                                                 fidelity=fidelity, curve=curve, state=state,
                                                 loss_curve=trainer.loss_curve,
                                                 resumed_from_epoch=trainer.resumed_from_epoch))

    def test_accuracy(self, arch: Any, state: dict[str, torch.Tensor]) -> float:
        model = self._build(arch, 0)
        model.load_state_dict(state)
        model.to(self.device)
        return accuracy(model, self.dataset.test, self.device)
