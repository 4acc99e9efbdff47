"""Plain supervised training and evaluation of a network on in-memory tensors."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from nasjobs.datasets import Split


@dataclass(frozen=True)
class SGDSettings:
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    auxiliary_weight: float = 0.4  # weight of an auxiliary head's loss (Szegedy et al. 2015; DARTS uses 0.4)
    grad_clip: float = 5.0  # gradient-norm clip; 0 turns it off


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


def train_epochs(model: nn.Module, train: Split, val: Split, epochs: int, settings: SGDSettings, seed: int,
                 device: torch.device, on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """SGD with Nesterov momentum and a cosine learning-rate schedule; returns validation accuracy per epoch."""
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay, nesterov=settings.momentum > 0)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    curve = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), settings.batch_size):
            idx = order[start:start + settings.batch_size]
            if len(idx) < 2:  # batch norm cannot normalise a single sample
                continue
            x, y = train.x[idx].to(device), train.y[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            if isinstance(out, tuple):  # (logits, auxiliary logits) from a network with an auxiliary head
                logits, aux = out
                loss = loss_fn(logits, y) + settings.auxiliary_weight * loss_fn(aux, y)
            else:
                loss = loss_fn(out, y)
            loss.backward()
            if settings.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
        curve.append(accuracy(model, val, device))
        if on_epoch is not None:
            on_epoch(epoch + 1, curve[-1])
    return curve
