"""Low-fidelity training: fewer epochs, a stratified fraction of the training data and narrower networks."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from nasjobs.datasets import Dataset, Split, split_indices
from nasjobs.estimators.base import EpochHook, EvalResult
from nasjobs.estimators.train import TrainConfig, TrainEstimator
from nasjobs.metrics import count_params
from nasjobs.options import OptionError, option
from nasjobs.spaces.base import SearchSpace
from nasjobs.training import TrialCheckpoint, accuracy, fit, seeded_init

# Space name -> function(space, arch, multiplier) returning the narrowed (space, arch) and what was narrowed.
WidthScaler = Callable[[SearchSpace, Any, float], tuple[SearchSpace, Any, dict[str, Any]]]


def _scaled(count: int, multiplier: float, least: int) -> int:
    return max(least, int(round(count * multiplier)))


def _scale_config_field(field: str, least: int) -> WidthScaler:
    """Width lives in the space's config (`channels` of nb201, `init_channels` of darts): a narrowed copy of the
    space builds every cell with the scaled channel count (and the doublings after each reduction follow it)."""

    def scale(space: SearchSpace, arch: Any, multiplier: float) -> tuple[SearchSpace, Any, dict[str, Any]]:
        value = _scaled(getattr(space.config, field), multiplier, least)
        narrowed = type(space)(dataclasses.replace(space.config, **{field: value}))
        return narrowed, arch, {field: value}

    return scale


def _scale_chain_filters(space: SearchSpace, arch: Any, multiplier: float) -> tuple[SearchSpace, Any, dict[str, Any]]:
    """Width of a chain CNN lives in the architecture (each layer's filter count): every layer's count is scaled
    and snapped to the nearest count the space type allows (`FILTER_CHOICES`, ties to the smaller), and the
    network is built by a copy of the space that also allows those counts. The narrowed architecture is only
    ever built, never stored as a key."""
    from nasjobs.spaces.chain_cnn import FILTER_CHOICES

    def snap(filters: int) -> int:
        target = filters * multiplier
        return min(FILTER_CHOICES, key=lambda f: (abs(f - target), f))

    layers = tuple(dataclasses.replace(layer, filters=snap(layer.filters)) for layer in arch.layers)
    allowed = tuple(f for f in FILTER_CHOICES if f in space.config.filters or any(l.filters == f for l in layers))
    narrowed = type(space)(dataclasses.replace(space.config, filters=allowed))
    return narrowed, dataclasses.replace(arch, layers=layers), {"filters": [layer.filters for layer in layers]}


WIDTH_SCALERS: dict[str, WidthScaler] = {
    "nb201": _scale_config_field("channels", 1),
    "darts": _scale_config_field("init_channels", 2),
    "chain_cnn": _scale_chain_filters,
}


@dataclass(frozen=True)
class LowFidelityConfig(TrainConfig):
    epoch_fraction: float = option(0.25, "Train for this fraction of the experiment's epochs (at least one epoch); "
                                         "the cosine schedule is compressed, not cut", min=0.01, max=1.0)
    data_fraction: float = option(1.0, "Train on this stratified fraction of the training split (validation "
                                       "stays whole, so figures stay comparable)", min=0.01, max=1.0)
    data_seed: int = option(0, "Seed of the training subset; one subset for every trial, so candidates are "
                               "compared on the same data", min=0, max=2**31 - 1)
    width_multiplier: float = option(1.0, "Scale network width: nb201 `channels`, darts `init_channels`, each "
                                          "chain_cnn layer's filters (snapped to an allowed count; other "
                                          "spaces: 1 only)", min=0.05, max=1.0)


def stratified_subset(split: Split, fraction: float, seed: int) -> Split:
    """`fraction` of each class of `split`, chosen with `numpy.random.default_rng(seed)` (the whole split at 1)."""
    if fraction >= 1.0:
        return split
    (idx,) = split_indices(split.y.numpy(), (fraction,), seed)
    idx_t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
    return Split(split.x[idx_t], split.y[idx_t])


class LowFidelityEstimator(TrainEstimator):
    """Train a cheaper proxy of the candidate and report its validation accuracy.

    The fidelities are the three of Zela et al. 2018 ("Towards automated deep learning: efficient joint neural
    architecture and hyperparameter search") and of Zoph et al. 2018 §4 (NASNet searched with fewer epochs and
    narrower, shallower nets): epochs e = max(1, round(epoch_fraction * budget)) with the cosine schedule run
    to its end over those e epochs; a stratified `data_fraction` of the training split (Klein et al. 2017,
    FABOLAS); and a width multiplier whose meaning depends on the space (`WIDTH_SCALERS`). `params` and `flops`
    are the full-width candidate's, since strategies and users judge the candidate, not its proxy; the proxy's
    own size is in `fidelity["trained_params"]`.
    """

    name = "low_fidelity"
    title = "Low fidelity (fewer epochs, less data, narrower)"
    Config = LowFidelityConfig

    def __init__(self, space: SearchSpace, dataset: Dataset, config: LowFidelityConfig, device: torch.device) -> None:
        super().__init__(space, dataset, config, device)
        self.check_space(config, space)
        self.train_split = stratified_subset(dataset.train, config.data_fraction, config.data_seed)

    @classmethod
    def check_space(cls, config: LowFidelityConfig, space: SearchSpace) -> None:
        """A narrower proxy needs a rule to scale the space's widths; the other spaces train at full width."""
        if config.width_multiplier != 1.0 and space.name not in WIDTH_SCALERS:
            raise OptionError("estimator.width_multiplier",
                              f"the low_fidelity estimator scales widths of the {', '.join(sorted(WIDTH_SCALERS))} "
                              f"space(s) only, not of the {space.name} space; leave it at 1")

    def epochs_for(self, budget: int) -> int:
        return max(1, int(round(self.config.epoch_fraction * budget)))

    def _proxy(self, arch: Any) -> tuple[SearchSpace, Any, dict[str, Any]]:
        if self.config.width_multiplier == 1.0:
            return self.space, arch, {}
        return WIDTH_SCALERS[self.space.name](self.space, arch, self.config.width_multiplier)

    def _build_proxy(self, arch: Any, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
        space, proxy_arch, width = self._proxy(arch)
        ds = self.dataset
        return seeded_init(lambda: space.build(proxy_arch, ds.input_shape, ds.num_classes), seed), width

    def evaluate(self, arch: Any, budget: int, *, seed: int, hook: EpochHook | None = None,
                 resume: TrialCheckpoint | None = None) -> EvalResult:
        params, flops = self.cost(arch)
        model, width = self._build_proxy(arch, seed)
        epochs = self.epochs_for(budget)
        started = time.perf_counter()
        trainer = fit(model, self.train_split, self.dataset.val, epochs, self._settings(), seed, self.device, hook,
                      resume=resume)
        curve = trainer.curve
        seconds = trainer.earlier_seconds + time.perf_counter() - started
        c = self.config
        fidelity = {"estimator": self.name, "epochs": epochs, "full_epochs": budget, "epoch_fraction": c.epoch_fraction,
                    "data_fraction": c.data_fraction, "train_samples": len(self.train_split),
                    "data_seed": c.data_seed, "width_multiplier": c.width_multiplier,
                    "trained_params": count_params(model), **width}
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return self.mark_chance_level(EvalResult(
            val_acc=curve[-1] if curve else accuracy(model, self.dataset.val, self.device), params=params,
            flops=flops, train_seconds=seconds, fidelity=fidelity, curve=curve, state=state,
            loss_curve=trainer.loss_curve, resumed_from_epoch=trainer.resumed_from_epoch))

    def network(self, arch: Any, seed: int = 0) -> torch.nn.Module:
        return self._build_proxy(arch, seed)[0]  # the proxy `evaluate` trains (same width)

    def test_accuracy(self, arch: Any, state: dict[str, torch.Tensor]) -> float:
        """Test accuracy of the proxy network `evaluate` trained (same width)."""
        model = self.network(arch)
        model.load_state_dict(state)
        model.to(self.device)
        return accuracy(model, self.dataset.test, self.device)
