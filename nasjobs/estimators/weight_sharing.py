"""One-shot evaluation: candidates inherit their weights from a supernet trained once with uniform single paths."""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from nasjobs.chain_supernet import ChainSuperNet
from nasjobs.datasets import Dataset
from nasjobs.estimators.base import EpochHook, EvalResult
from nasjobs.estimators.train import TrainConfig, TrainEstimator
from nasjobs.options import config_to_json, option
from nasjobs.spaces.base import SearchSpace
from nasjobs.spaces.nb201 import EDGES, NUM_NODES, NB201, OP_BUILDERS, NB201Arch, ResNetBasicBlock
from nasjobs.training import accuracy, seeded_init, train_epochs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightSharingConfig(TrainConfig):
    supernet_epochs: int = option(100, "Epochs of supernet training, once per experiment (each sampled path sees "
                                       "a share of the steps, so several times one network's epochs)",
                                  min=1, max=10_000)
    supernet_seed: int = option(0, "Seed of the supernet's initial weights and of its sampled paths",
                                min=0, max=2**31 - 1)
    calibration_batches: int = option(10, "Training batches used to recompute a candidate's batch-norm "
                                          "statistics before it is scored", min=1, max=10_000)


# supernet ---------------------------------------------------------------------------------------------------
class SuperCell(nn.Module):
    """A NAS-Bench-201 cell holding every allowed operation on every edge; a path picks one per edge."""

    def __init__(self, ops: tuple[str, ...], channels: int) -> None:
        super().__init__()
        self.edges = list(EDGES)
        self.ops = nn.ModuleList(nn.ModuleDict({op: OP_BUILDERS[op](channels) for op in ops}) for _ in EDGES)

    def forward(self, x: torch.Tensor, arch: NB201Arch) -> torch.Tensor:
        nodes = [x]
        for node in range(1, NUM_NODES):
            nodes.append(sum(choices[op](nodes[src])
                             for (dst, src), choices, op in zip(self.edges, self.ops, arch) if dst == node))
        return nodes[-1]


class NB201SuperNet(nn.Module):
    """The NAS-Bench-201 skeleton (`TinyNetwork`) with `SuperCell`s; module names match it, plus one level for
    the operation, so a path's weights load into `NB201.build(arch)` by dropping that level (`path_state`)."""

    def __init__(self, space: NB201, in_channels: int, num_classes: int) -> None:
        super().__init__()
        c0, n = space.config.channels, space.config.cells
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0))
        layers: list[nn.Module] = []
        c_prev = c0
        for stage in range(3):
            c = c0 * 2 ** stage
            if stage > 0:
                layers.append(ResNetBasicBlock(c_prev, c))
            layers += [SuperCell(space.ops, c) for _ in range(n)]
            c_prev = c
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor, arch: NB201Arch) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.cells:
            x = layer(x, arch) if isinstance(layer, SuperCell) else layer(x)
        return self.classifier(self.pool(self.lastact(x)).flatten(1))

    def path_state(self, state: dict[str, torch.Tensor], arch: NB201Arch, model: nn.Module) -> dict[str, torch.Tensor]:
        return path_state(state, arch)


_OP_KEY = re.compile(r"^(cells\.\d+\.ops\.(\d+))\.([a-z0-9_]+)\.(.+)$")


def path_state(supernet_state: dict[str, torch.Tensor], arch: NB201Arch) -> dict[str, torch.Tensor]:
    """The weights of one path, keyed as `NB201.build(arch)` names them: `cells.i.ops.e.<op>.w` becomes
    `cells.i.ops.e.w` for the edge's chosen op; other ops' weights are dropped."""
    out = {}
    for key, value in supernet_state.items():
        m = _OP_KEY.match(key)
        if m is None:
            out[key] = value
        elif arch[int(m.group(2))] == m.group(3):
            out[f"{m.group(1)}.{m.group(4)}"] = value
    return out


class UniformPathSampler(nn.Module):
    """Each forward pass runs the supernet on one path drawn uniformly from the space with an injected RNG: the
    single-path uniform sampling of SPOS, so `train_epochs` trains a supernet as it trains any network."""

    def __init__(self, supernet: nn.Module, sample: Callable[[], Any]) -> None:
        super().__init__()
        self.supernet = supernet
        self.sample = sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, self.sample())


def recalibrate_batch_norm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Recompute every batch norm's running mean and variance as the plain average over `batches` (momentum
    None), in place of statistics accumulated over the supernet's mixture of paths (Guo et al. 2020, §3.3)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    model.eval()


# estimator --------------------------------------------------------------------------------------------------
# A supernet runs `forward(x, arch)` on one architecture and cuts its weights out with
# `path_state(state, arch, model)`, keyed as `model = space.build(arch, ...)` names them.
SUPERNETS: dict[str, type[nn.Module]] = {"nb201": NB201SuperNet, "chain_cnn": ChainSuperNet}


class WeightSharingEstimator(TrainEstimator):
    """One-shot estimate: validation accuracy of the candidate with weights inherited from a supernet.

    Follows Guo et al. 2020 ("Single path one-shot neural architecture search with uniform sampling", ECCV):
    the supernet weights are trained once, W_A = argmin_W E_{a ~ Gamma(A)} [L_train(N(a, W(a)))] (eq. 5), with
    Gamma the uniform distribution over single paths, one path per mini-batch; a candidate a is then scored as
    ACC_val(N(a, W_A(a))) after its batch-norm statistics are recomputed on a few training batches, as in
    Bender et al. 2018 ("Understanding and simplifying one-shot architecture search", ICML), who showed that
    such inherited-weight accuracies rank architectures. Supported spaces: nb201 (every op on every edge) and
    chain_cnn (`ChainSuperNet`: every architecture a slice of the largest layers).

    The supernet is built and trained on the first `evaluate` of this instance, then reused by every trial; with
    a `checkpoint_dir` (constructor argument, else the experiment's work folder) it is saved there, under a name
    fixed by the space, dataset and supernet options, and a later instance (a restarted worker) loads it instead
    of training. The figure is one-shot (`fidelity["one_shot"]`); `state` is the candidate's inherited,
    recalibrated weights, in the layout of `space.build(arch)`.
    """

    name = "weight_sharing"
    title = "Weight sharing (one-shot supernet, SPOS)"
    Config = WeightSharingConfig

    def __init__(self, space: SearchSpace, dataset: Dataset, config: WeightSharingConfig, device: torch.device,
                 checkpoint_dir: str | Path | None = None) -> None:
        self.check_space(config, space)
        super().__init__(space, dataset, config, device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.supernet: nn.Module | None = None
        self.supernet_info: dict[str, Any] = {}
        self.supernet_trainings = 0  # how often this instance trained a supernet: 0 or 1

    @classmethod
    def check_space(cls, config: WeightSharingConfig, space: SearchSpace) -> None:
        if space.name not in SUPERNETS:
            raise ValueError(f"weight sharing has a supernet for the {', '.join(sorted(SUPERNETS))} space(s) only, "
                             f"not for {space.name!r}")

    @classmethod
    def check_dataset(cls, config: WeightSharingConfig, dataset: str, kind: str) -> None:
        super().check_dataset(config, dataset, kind)
        if kind != "image":  # the supernets are 2-D convolutional networks
            raise ValueError(f"weight sharing trains an image supernet; {dataset!r} is {kind} data")

    # the supernet, trained once -----------------------------------------------------------------------------
    def supernet_key(self) -> str:
        """A fingerprint of everything the supernet's weights depend on, used as its file name."""
        c = self.config
        parts = {"space": self.space.name, "space_options": config_to_json(self.space.config),
                 "dataset": self.dataset.name, "epochs": c.supernet_epochs, "seed": c.supernet_seed,
                 "lr": c.lr, "momentum": c.momentum, "weight_decay": c.weight_decay, "batch_size": c.batch_size,
                 "grad_clip": c.grad_clip}
        if c.crop_padding or c.flip or c.cutout:  # absent when off, so keys of earlier supernets still match
            parts["augmentation"] = [c.crop_padding, c.flip, c.cutout]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def checkpoint_path(self) -> Path | None:
        folder = self.checkpoint_dir or self.workdir  # the platform gives each experiment a work folder
        if folder is None:
            return None
        return folder / f"supernet-{self.space.name}-{self.supernet_key()}.pt"

    def _new_supernet(self) -> nn.Module:
        ds = self.dataset
        return seeded_init(lambda: SUPERNETS[self.space.name](self.space, ds.input_shape[0], ds.num_classes),
                           self.config.supernet_seed)

    def _load(self, path: Path) -> nn.Module | None:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            supernet = self._new_supernet()
            supernet.load_state_dict(saved["state"])
        except Exception:  # a torn or stale file costs a retraining, never the experiment
            log.warning("could not load the supernet checkpoint %s; training a new one", path, exc_info=True)
            return None
        self.supernet_info = {"supernet_seconds": float(saved["seconds"]), "supernet_curve": list(saved["curve"]),
                              "supernet_loaded_from": str(path)}
        return supernet.to(self.device)

    def _train(self, hook: EpochHook | None) -> nn.Module:
        supernet = self._new_supernet()
        rng = random.Random(self.config.supernet_seed)
        sampler = UniformPathSampler(supernet, lambda: self.space.sample(rng))
        started = time.perf_counter()
        curve = train_epochs(sampler, self.dataset.train, self.dataset.val, self.config.supernet_epochs,
                             self._settings(), self.config.supernet_seed, self.device, hook)
        seconds = time.perf_counter() - started
        self.supernet_trainings += 1
        self.supernet_info = {"supernet_seconds": seconds, "supernet_curve": curve, "supernet_loaded_from": None}
        path = self.checkpoint_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            state = {k: v.detach().cpu() for k, v in supernet.state_dict().items()}
            torch.save({"state": state, "seconds": seconds, "curve": curve}, tmp)
            tmp.replace(path)  # atomic: a killed worker never leaves half a supernet under the real name
        return supernet

    def ensure_supernet(self, hook: EpochHook | None = None) -> nn.Module:
        """The trained supernet: this instance's, else the checkpoint's, else trained now."""
        if self.supernet is None:
            path = self.checkpoint_path()
            loaded = self._load(path) if path is not None and path.exists() else None
            self.supernet = loaded if loaded is not None else self._train(hook)
        return self.supernet

    # one candidate ------------------------------------------------------------------------------------------
    def _calibration_batches(self) -> list[torch.Tensor]:
        """The same training batches for every candidate, drawn from the supernet seed."""
        c, train = self.config, self.dataset.train
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(c.supernet_seed))
        starts = range(0, min(len(train), c.calibration_batches * c.batch_size), c.batch_size)
        batches = [order[s:s + c.batch_size] for s in starts]
        return [train.x[idx].to(self.device) for idx in batches if len(idx) > 1]  # BN needs two samples

    def evaluate(self, arch: Any, budget: int, *, seed: int, hook: EpochHook | None = None) -> EvalResult:
        """Score `arch` with inherited weights; `budget` is not spent (the supernet's epochs are an option) and
        `seed` is not used (every candidate inherits from the one supernet, recalibrated on the same batches)."""
        supernet = self.ensure_supernet(hook)
        started = time.perf_counter()
        model = self._build(arch, seed)
        model.load_state_dict(supernet.path_state(supernet.state_dict(), arch, model))
        model.to(self.device)
        recalibrate_batch_norm(model, self._calibration_batches())
        val_acc = accuracy(model, self.dataset.val, self.device)
        seconds = time.perf_counter() - started
        if hook is not None:
            hook(0, val_acc)
        c = self.config
        path = self.checkpoint_path()
        fidelity = {"estimator": self.name, "one_shot": True, "epochs": 0, "data_fraction": 1.0,
                    "supernet_epochs": c.supernet_epochs, "supernet_seed": c.supernet_seed,
                    "calibration_batches": c.calibration_batches,
                    "supernet_seconds": round(self.supernet_info["supernet_seconds"], 3),
                    "supernet_checkpoint": str(path) if path is not None else None,
                    "supernet_loaded": self.supernet_info["supernet_loaded_from"] is not None}
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        params, flops = self.cost(arch, model)
        return self.mark_chance_level(EvalResult(val_acc=val_acc, params=params, flops=flops,
                                                 train_seconds=seconds, fidelity=fidelity, curve=[], state=state))
