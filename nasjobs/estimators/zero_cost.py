"""Training-free scores of a network at initialisation, from one batch: synflow, grad_norm and NASWOT."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from nasjobs.datasets import Dataset, Split
from nasjobs.estimators.base import EpochHook, EvalResult, Figure
from nasjobs.estimators.train import TrainConfig, TrainEstimator
from nasjobs.options import option
from nasjobs.spaces.base import SearchSpace
from nasjobs.training import accuracy, train_epochs

# log of the smallest score kept apart from zero, so a dead network (all-`none` cell) ranks last but finite
LOG_FLOOR = math.log(1e-300)


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # (logits, auxiliary logits) from an auxiliary head


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """The prunable weights the zero-cost literature scores: those of convolutions and linear layers."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def synflow(model: nn.Module, batch: Split) -> float:
    """Synaptic flow (Tanaka et al. 2020, "Pruning neural networks without any data by iteratively conserving
    synaptic flow", NeurIPS, eq. 2 and Algorithm 1): with every parameter replaced by its absolute value (the
    linearisation; signs are irrelevant as the copy is thrown away) and an all-ones input,
    R = 1^T (prod_l |theta^[l]|) 1 and the score is sum over weights of (dR/dtheta) * theta, as summed per
    network by Abdelfattah et al. 2021 ("Zero-cost proxies for lightweight NAS", ICLR). Computed in float64 on a
    copy in eval mode, so batch norm at initialisation is the identity and the product does not overflow."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    ones = torch.ones((1, *batch.x.shape[1:]), dtype=torch.float64, device=batch.x.device)
    _logits(net(ones)).sum().backward()
    return float(sum((w.grad * w.detach()).abs().sum() for w in _weights(net) if w.grad is not None))


def grad_norm(model: nn.Module, batch: Split) -> float:
    """Sum over layers of the Euclidean norm of the cross-entropy loss gradient on one batch,
    sum_l ||dL/dW_l||_2 (Abdelfattah et al. 2021, §3, the `grad_norm` proxy)."""
    net = copy.deepcopy(model).train()
    loss = nn.functional.cross_entropy(_logits(net(batch.x)), batch.y)
    loss.backward()
    return float(sum(w.grad.double().norm() for w in _weights(net) if w.grad is not None))


def naswot(model: nn.Module, batch: Split) -> float:
    """NASWOT (Mellor et al. 2021, "Neural architecture search without training", ICML, eq. 2):
    s = log |det K_H|, with K_H[i, j] = N_A - d_H(c_i, c_j), where c_i is the binary code of which of the N_A
    rectified units are active for input i and d_H the Hamming distance. Equivalently
    K_H = C C^T + (1 - C)(1 - C)^T; the log-determinant is taken with `slogdet` in float64."""
    net = copy.deepcopy(model).train()
    codes: list[torch.Tensor] = []

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        codes.append((output.detach() > 0).flatten(1).double())

    handles = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            net(batch.x)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        return LOG_FLOOR  # no rectified units: nothing to tell inputs apart by
    c = torch.cat(codes, dim=1)
    kernel = c @ c.T + (1 - c) @ (1 - c).T
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign != 0 and math.isfinite(float(logdet)) else LOG_FLOOR


# name -> (score function, whether the score is positive and ranked on a log scale)
PROXIES: dict[str, tuple[Callable[[nn.Module, Split], float], bool]] = {
    "synflow": (synflow, True),
    "grad_norm": (grad_norm, True),
    "naswot": (naswot, False),
}


@dataclass(frozen=True)
class ZeroCostConfig(TrainConfig):
    proxy: str = option("synflow", "Which training-free score", choices=tuple(PROXIES))
    batch_size: int = option(64, "Inputs in the one scoring batch (also the final training's mini-batch)",
                             min=2, max=4096)
    batch_seed: int = option(0, "Seed choosing the scoring batch; one batch for every trial, so candidates are "
                                "scored on the same inputs", min=0, max=2**31 - 1)
    final_epochs: int = option(0, "Epochs to train the chosen network for its test figure (0: the experiment's "
                                  "epochs)", min=0, max=10_000)


class ZeroCostEstimator(TrainEstimator):
    """Score a candidate at initialisation (weights drawn from the trial's seed) on one batch, without training.

    The figure is a score, not an accuracy: `val_acc` carries log(score) for synflow and grad_norm and the
    NASWOT log-determinant as is, finite and comparable only between candidates of one experiment; strategies
    only rank, so a monotone transform changes nothing for them, and the log keeps model-based strategies'
    rewards in a sane range. The raw score is `fidelity["score"]`. `train_seconds` is the time the scoring took.
    No weights are trained, so `state` is None; `test_accuracy` trains the chosen network from scratch for
    `final_epochs` (or the experiment's epochs) with the `train` options and measures it on the test split.
    """

    name = "zero_cost"
    title = "Zero-cost proxy (synflow, grad_norm, NASWOT)"
    Config = ZeroCostConfig
    marks_chance_level = False  # a score at initialisation, not an accuracy after training

    def __init__(self, space: SearchSpace, dataset: Dataset, config: ZeroCostConfig, device: torch.device) -> None:
        super().__init__(space, dataset, config, device)
        generator = torch.Generator().manual_seed(config.batch_seed)
        idx = torch.randperm(len(dataset.train), generator=generator)[:config.batch_size]
        self.batch = Split(dataset.train.x[idx].to(device), dataset.train.y[idx].to(device))
        self._budget: int | None = None

    @classmethod
    def figure(cls, config: ZeroCostConfig) -> Figure:
        """A score, not an accuracy: log(score) for the proxies compared on a log scale."""
        _, log_scale = PROXIES[config.proxy]
        return Figure("score", f"{'log ' if log_scale else ''}{config.proxy} score", "Score")

    def evaluate(self, arch: Any, budget: int, *, seed: int, hook: EpochHook | None = None) -> EvalResult:
        """Score `arch`; `budget` is not spent (remembered as the epochs of the final training)."""
        self._budget = budget
        started = time.perf_counter()
        model = self._build(arch, seed).to(self.device)
        score_fn, log_scale = PROXIES[self.config.proxy]
        score = score_fn(model, self.batch)
        figure = (math.log(score) if score > 0 else LOG_FLOOR) if log_scale else score
        seconds = time.perf_counter() - started
        if hook is not None:
            hook(0, figure)
        params, flops = self.cost(arch, model)
        fidelity = {"estimator": self.name, "proxy": self.config.proxy, "score": score,
                    "figure": "log(score)" if log_scale else "score", "epochs": 0, "data_fraction": 0.0,
                    "batch_size": len(self.batch), "batch_seed": self.config.batch_seed, "init_seed": seed}
        return EvalResult(val_acc=figure, params=params, flops=flops, train_seconds=seconds, fidelity=fidelity,
                          curve=[], state=None)

    def test_accuracy(self, arch: Any, state: dict[str, torch.Tensor] | None) -> float:
        """Train `arch` (seed 0) for `final_epochs` and return its test accuracy; `state`, always None for a
        zero-cost trial, is used when given."""
        model = self._build(arch, 0)
        if state is not None:
            model.load_state_dict(state)
        else:
            epochs = self.config.final_epochs or self._budget or 1
            train_epochs(model, self.dataset.train, self.dataset.val, epochs, self._settings(), 0, self.device)
        model.to(self.device)
        return accuracy(model, self.dataset.test, self.device)
