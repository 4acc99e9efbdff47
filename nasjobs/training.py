"""Plain supervised training and evaluation of a network on in-memory tensors."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from nasjobs.augment import Augmentation
from nasjobs.datasets import Split
from nasjobs.rng import derive_seed


@dataclass(frozen=True)
class SGDSettings:
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    auxiliary_weight: float = 0.4  # weight of an auxiliary head's loss (Szegedy et al. 2015; DARTS uses 0.4)
    grad_clip: float = 5.0  # gradient-norm clip; 0 turns it off
    augmentation: Augmentation = Augmentation()  # applied to each training batch on the device


def seeded_init(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with its weights drawn from `seed`, leaving the global torch RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, device: torch.device, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        x = split.x[start:start + batch_size].to(device)
        y = split.y[start:start + batch_size].to(device)
        correct += (model(x).argmax(dim=1) == y).sum().item()
    return correct / max(1, len(split))


class Trainer:
    """SGD with Nesterov momentum and a cosine learning-rate schedule over `total_epochs`, resumable between
    epochs: `state_dict()` holds the weights, the optimizer, the schedule, the data-order generator and the
    learning curve, so training stopped at epoch k and continued later is the same as training straight through.
    """

    def __init__(self, model: nn.Module, train: Split, val: Split, settings: SGDSettings, total_epochs: int,
                 seed: int, device: torch.device) -> None:
        self.model = model.to(device)
        self.train, self.val, self.settings, self.device = train, val, settings, device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                         weight_decay=settings.weight_decay, nesterov=settings.momentum > 0)
        steps_per_epoch = math.ceil(len(train) / settings.batch_size)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, total_epochs * steps_per_epoch))
        self.generator = torch.Generator().manual_seed(seed)
        # Its own generator on the device, so augmented batches never leave it and data order stays as without.
        self.augment_generator = torch.Generator(device=device).manual_seed(derive_seed(seed, "augment"))
        self.loss_fn = nn.CrossEntropyLoss()
        self.epoch = 0
        self.curve: list[float] = []

    def _step(self, idx: torch.Tensor) -> None:
        settings = self.settings
        x, y = self.train.x[idx].to(self.device), self.train.y[idx].to(self.device)
        if settings.augmentation.active:
            x = settings.augmentation(x, self.augment_generator)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(x)
        if isinstance(out, tuple):  # (logits, auxiliary logits) from a network with an auxiliary head
            logits, aux = out
            loss = self.loss_fn(logits, y) + settings.auxiliary_weight * self.loss_fn(aux, y)
        else:
            loss = self.loss_fn(out, y)
        loss.backward()
        if settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()

    def run(self, until_epoch: int, on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
        """Train up to epoch `until_epoch` (counted from the start); returns the whole learning curve."""
        while self.epoch < until_epoch:
            self.model.train()
            order = torch.randperm(len(self.train), generator=self.generator)
            for start in range(0, len(self.train), self.settings.batch_size):
                idx = order[start:start + self.settings.batch_size]
                if len(idx) < 2:  # batch norm cannot normalise a single sample
                    continue
                self._step(idx)
            self.epoch += 1
            self.curve.append(accuracy(self.model, self.val, self.device))
            if on_epoch is not None:
                on_epoch(self.epoch, self.curve[-1])
        return list(self.curve)

    def state_dict(self) -> dict:
        return {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(), "augment_generator": self.augment_generator.get_state(),
                "epoch": self.epoch, "curve": list(self.curve)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        if "augment_generator" in state:  # checkpoints from before augmentation existed have none
            self.augment_generator.set_state(state["augment_generator"])
        self.epoch = int(state["epoch"])
        self.curve = [float(v) for v in state["curve"]]


def train_epochs(model: nn.Module, train: Split, val: Split, epochs: int, settings: SGDSettings, seed: int,
                 device: torch.device, on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train for `epochs` epochs (the schedule spans them); returns validation accuracy per epoch."""
    return Trainer(model, train, val, settings, epochs, seed, device).run(epochs, on_epoch)
