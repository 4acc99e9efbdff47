"""Plain supervised training and evaluation of a network on in-memory tensors."""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from nasjobs.augment import Augmentation
from nasjobs.datasets import Split
from nasjobs.rng import derive_seed

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SGDSettings:
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    auxiliary_weight: float = 0.4  # weight of an auxiliary head's loss (Szegedy et al. 2015; DARTS uses 0.4)
    grad_clip: float = 5.0  # gradient-norm clip; 0 turns it off
    augmentation: Augmentation = Augmentation()  # applied to each training batch on the device


# Called between training batches (a search installs its store's heartbeat): it may raise to stop training at
# once, so a cancel takes effect within a batch rather than at the end of a long epoch.
_BETWEEN_BATCHES: ContextVar[Callable[[], None] | None] = ContextVar("between_batches", default=None)


@contextmanager
def between_batches(check: Callable[[], None]) -> Iterator[None]:
    """Run `check` between the batches of every training and evaluation loop inside the block."""
    token = _BETWEEN_BATCHES.set(check)
    try:
        yield
    finally:
        _BETWEEN_BATCHES.reset(token)


class TrialCheckpoint(Protocol):
    """Where a trial that trains one network for its whole length keeps its progress between epochs, so a trial
    whose worker died (or that was handed back) resumes at its last saved epoch rather than its first
    (`nasjobs.artifacts.FileCheckpoint` keeps it beside the trial's weights). `every_seconds` spaces the saves: at
    most one per that many seconds of training, one after every epoch at 0."""

    every_seconds: float

    def load(self) -> dict[str, Any] | None:
        """The last saved state, or None when there is none."""

    def save(self, state: dict[str, Any]) -> None:
        """Replace the saved state, atomically: a worker killed meanwhile leaves the previous one whole."""


class TrainingDiverged(RuntimeError):
    """Training produced a NaN or infinite loss; the trial fails with this as its error."""


CHANCE_MARGIN = 0.02  # above the guess, still no better than guessing on a validation split of a few hundred


def guessing_accuracy(labels: torch.Tensor) -> float:
    """The accuracy of always answering the most common class of `labels`: what a network that learned nothing
    but the class balance scores (1/classes on a balanced split, more on an unbalanced one)."""
    if labels.numel() == 0:
        return 0.0
    return float(torch.bincount(labels.flatten().long()).max()) / labels.numel()


def at_chance(val_acc: float, labels: torch.Tensor, margin: float = CHANCE_MARGIN) -> bool:
    """Whether a trained network's accuracy on the split of `labels` is no better than guessing its most common
    class: training that diverged without a NaN (a learning rate too high to learn, a network stuck on one class)
    must be flagged, not ranked as a result. A split of one class has nothing to guess, so nothing is flagged."""
    if labels.numel() == 0 or int(labels.max()) == int(labels.min()):
        return False
    return val_acc <= guessing_accuracy(labels) + margin


@dataclass(frozen=True)
class TrainingFormat:
    """How networks are trained inside a `training_format` block, unless a call says otherwise."""

    bf16: bool = False
    channels_last: bool = False


_FORMAT: ContextVar[TrainingFormat] = ContextVar("training_format", default=TrainingFormat())


@contextmanager
def training_format(bf16: bool = False, channels_last: bool = False) -> Iterator[None]:
    """Train every network inside the block with bf16 autocast and/or channels-last memory (`Trainer`): how a
    search applies its experiment's settings to whatever its estimator trains."""
    token = _FORMAT.set(TrainingFormat(bf16, channels_last))
    try:
        yield
    finally:
        _FORMAT.reset(token)


def batch_done() -> None:
    """Called by a training loop after each batch: the installed check, if any."""
    check = _BETWEEN_BATCHES.get()
    if check is not None:
        check()


def seeded_init(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with its weights drawn from `seed`, leaving the global torch RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def resident_bytes() -> int:
    """Splits up to this size (`NAS_RESIDENT_MB`, default 2048, together) are copied to the training device once
    and stay there for the whole trial; larger ones stay in host memory and move one batch at a time."""
    return int(float(os.environ.get("NAS_RESIDENT_MB", "") or 2048) * 1024**2)


def loader_workers() -> int:
    """Processes a streaming DataLoader gathers batches with (`NAS_LOADER_WORKERS`, default 2); none inside a
    daemonic process (a Celery prefork child), which may not start processes of its own."""
    if multiprocessing.current_process().daemon:
        return 0
    return int(os.environ.get("NAS_LOADER_WORKERS", "") or 2)


_ON_DEVICE: dict[tuple[int, str], tuple[Split, Split]] = {}  # (id of the host split, device) -> (host, device copy)


def on_device(split: Split, device: torch.device, budget: int | None = None) -> Split:
    """The split where training reads it: on the device when it fits `resident_bytes()` (copied once per process,
    so successive trials share the copy), else the host split itself, from which each batch is copied."""
    if device.type == "cpu":
        return split
    key = (id(split.x), str(device))
    if key in _ON_DEVICE:
        return _ON_DEVICE[key][1]
    size = split.x.element_size() * split.x.nelement() + split.y.element_size() * split.y.nelement()
    if size > (resident_bytes() if budget is None else budget):
        return split
    moved = Split(split.x.to(device), split.y.to(device))
    if len(_ON_DEVICE) >= 4:  # a worker trains on one or two datasets at a time
        _ON_DEVICE.pop(next(iter(_ON_DEVICE)))
    _ON_DEVICE[key] = (split, moved)  # the host split is kept, so its id is not reused while cached
    return moved


def tune_cuda() -> None:
    """Let cuDNN time its convolution algorithms for each new shape and keep the fastest: a trial trains one
    network on one input size for many batches, so the first batch's search pays for itself."""
    torch.backends.cudnn.benchmark = True


def check_precision(device: torch.device, bf16: bool) -> None:
    """Refuse bf16 where it would not run as asked, rather than train in float32 under a bf16 label."""
    if not bf16:
        return
    if device.type != "cuda":
        raise ValueError(f"bf16 autocast needs a CUDA device; this run trains on {device.type!r}: turn bf16 off")
    if not torch.cuda.is_bf16_supported():
        raise ValueError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support: turn bf16 off")


def as_channels_last(x: torch.Tensor) -> torch.Tensor:
    """An image batch (N, C, H, W) in channels-last memory order; signals and tables have no such order."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, device: torch.device, batch_size: int = 512,
             channels_last: bool = False) -> float:
    """Top-1 accuracy on `split`, in float32 (a bf16 run is still measured at full precision)."""
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        x = split.x[start:start + batch_size].to(device, non_blocking=True)
        y = split.y[start:start + batch_size].to(device, non_blocking=True)
        if channels_last:
            x = as_channels_last(x)
        correct += (model(x).argmax(dim=1) == y).sum().item()
        batch_done()
    return correct / max(1, len(split))


class Trainer:
    """SGD with Nesterov momentum and a cosine learning-rate schedule over `total_epochs`, resumable between
    epochs: `state_dict()` holds the weights, the optimizer, the schedule, the data-order generator and the
    learning curves, so training stopped at epoch k and continued later is the same as training straight through.
    Two curves are kept, one value per epoch: `curve`, the validation accuracy (what median stopping and a resumed
    bracket read), and `loss_curve`, the mean training loss over the epoch's batches (None for epochs trained
    before checkpoints carried it). Each epoch logs one INFO line on `nasjobs.training`.

    Two settings of a run (both off by default; neither is part of the checkpoint, a resumed run passes them
    again): `bf16` runs forward and loss under `torch.autocast` in bfloat16 (CUDA only: anywhere else it is a
    ValueError); `channels_last` stores the model's convolution weights and every image batch in channels-last
    memory order, which tensor-core convolutions prefer (allowed on CPU, where it changes only speed). On CUDA
    the trainer turns on `torch.backends.cudnn.benchmark`.
    """

    def __init__(self, model: nn.Module, train: Split, val: Split, settings: SGDSettings, total_epochs: int,
                 seed: int, device: torch.device, stream: bool | None = None, *, bf16: bool = False,
                 channels_last: bool = False) -> None:
        current = _FORMAT.get()
        bf16, channels_last = bf16 or current.bf16, channels_last or current.channels_last
        check_precision(device, bf16)
        if device.type == "cuda":
            tune_cuda()
        self.bf16, self.channels_last = bf16, channels_last
        self.model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
        self.params = list(self.model.parameters())  # clipped after every batch: listed once
        budget = resident_bytes()
        train = on_device(train, device, budget)
        val = on_device(val, device, budget - (train.x.nelement() * train.x.element_size()
                                                if train.x.device.type != "cpu" else 0))
        self.train, self.val, self.settings, self.device = train, val, settings, device
        # A training split too large for the device streams through a DataLoader (worker processes gather the
        # batches, pinned for the copy); `stream` forces either way.
        self.stream = (device.type != "cpu" and train.x.device.type == "cpu") if stream is None else stream
        self.optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                         weight_decay=settings.weight_decay, nesterov=settings.momentum > 0)
        steps_per_epoch = math.ceil(len(train) / settings.batch_size)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, total_epochs * steps_per_epoch))
        self.generator = torch.Generator().manual_seed(seed)
        # Its own generator on the device, so augmented batches never leave it and data order stays as without.
        self.augment_generator = torch.Generator(device=device).manual_seed(derive_seed(seed, "augment"))
        self.total_epochs = total_epochs
        self.epoch = 0
        self.resumed_from_epoch: int | None = None  # set by `run_resumable` when it continued a checkpoint
        self.earlier_seconds = 0.0  # training time of the epochs that checkpoint holds
        self.curve: list[float] = []
        self.loss_curve: list[float | None] = []

    def _step(self, idx: torch.Tensor) -> torch.Tensor:
        if self.train.x.device != idx.device:
            idx = idx.to(self.train.x.device)
        return self._step_batch(self.train.x[idx], self.train.y[idx])

    def _loader(self, batches: list[torch.Tensor]) -> torch.utils.data.DataLoader:
        """The epoch's batches, in the trainer's own order, gathered by `loader_workers()` processes."""
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(self.train.x, self.train.y), batch_sampler=[b.tolist() for b in batches],
            num_workers=loader_workers(), pin_memory=self.device.type == "cuda")

    def _autocast(self) -> AbstractContextManager:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def _step_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch; returns its loss, detached and left on the device (read it and wait)."""
        settings = self.settings
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if settings.augmentation.active:
            x = settings.augmentation(x, self.augment_generator)
        if self.channels_last:
            x = as_channels_last(x)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.model(x)
            if isinstance(out, tuple):  # (logits, auxiliary logits) from a network with an auxiliary head
                logits, aux = out
                loss = F.cross_entropy(logits, y) + settings.auxiliary_weight * F.cross_entropy(aux, y)
            else:
                loss = F.cross_entropy(out, y)
        loss.backward()
        if settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def train_epoch(self) -> float:
        """One pass over the training split in this epoch's order, without measuring validation accuracy; returns
        the mean training loss over its batches."""
        self.model.train()
        order = torch.randperm(len(self.train), generator=self.generator)
        batches = [order[start:start + self.settings.batch_size]
                   for start in range(0, len(self.train), self.settings.batch_size)]
        batches = [b for b in batches if len(b) >= 2]  # batch norm cannot normalise a single sample
        loss, total = None, None
        if self.stream:
            for x, y in self._loader(batches):
                loss = self._step_batch(x, y)
                total = loss.float() if total is None else total + loss.float()
                batch_done()
        else:
            for idx in batches:
                loss = self._step(idx)
                total = loss.float() if total is None else total + loss.float()
                batch_done()
        self.epoch += 1
        # Read once an epoch (a sync on the GPU): a NaN or infinite loss poisons the weights, so the last
        # batch's loss tells whether any batch of the epoch diverged. The sum stays on the device until then.
        if loss is not None and not bool(torch.isfinite(loss)):
            raise TrainingDiverged(f"the training loss became {float(loss)} by epoch {self.epoch}: the network "
                                   "diverged (a learning rate too high, say)")
        return float(total) / len(batches) if total is not None else 0.0

    def run(self, until_epoch: int, on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
        """Train up to epoch `until_epoch` (counted from the start); returns the whole learning curve."""
        while self.epoch < until_epoch:
            started = time.perf_counter()
            self.loss_curve.append(self.train_epoch())
            self.curve.append(accuracy(self.model, self.val, self.device, channels_last=self.channels_last))
            log.info("epoch %d/%d: train loss %.4f, val acc %.2f%%, %.2f s", self.epoch, self.total_epochs,
                     self.loss_curve[-1], 100 * self.curve[-1], time.perf_counter() - started)
            if on_epoch is not None:
                on_epoch(self.epoch, self.curve[-1])
        return list(self.curve)

    def run_resumable(self, until_epoch: int, on_epoch: Callable[[int, float], None] | None,
                      checkpoint: TrialCheckpoint, key: dict[str, Any]) -> list[float]:
        """`run`, continuing from `checkpoint` when it holds this training's state (saved with the same `key`,
        say its seed and epochs: a re-evaluation with another seed starts afresh) and saving it there after an
        epoch, before `on_epoch` runs (which may stop the training), at most every `checkpoint.every_seconds`.
        Continued, it ends exactly as a run straight through would: same curves, same weights."""
        started = time.perf_counter()
        state = checkpoint.load()
        if state is not None and state.get("key") == key:
            self.load_state_dict(state["trainer"])
            self.resumed_from_epoch = self.epoch
            self.earlier_seconds = float(state.get("train_seconds", 0.0))
            log.info("resumed at epoch %d of %d from the trial's checkpoint", self.epoch, self.total_epochs)
        elif state is not None:
            log.warning("ignored a checkpoint of another training (%s, not %s)", state.get("key"), key)
        last_saved = time.monotonic()

        def saving(epoch: int, acc: float) -> None:
            nonlocal last_saved
            if checkpoint.every_seconds <= 0 or time.monotonic() - last_saved >= checkpoint.every_seconds:
                checkpoint.save({"key": key, "trainer": self.state_dict(),
                                 "train_seconds": self.earlier_seconds + time.perf_counter() - started})
                last_saved = time.monotonic()
            if on_epoch is not None:
                on_epoch(epoch, acc)

        return self.run(until_epoch, saving)

    def state_dict(self) -> dict:
        return {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(), "augment_generator": self.augment_generator.get_state(),
                "epoch": self.epoch, "curve": list(self.curve), "loss_curve": list(self.loss_curve)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        if "augment_generator" in state:  # checkpoints from before augmentation existed have none
            self.augment_generator.set_state(state["augment_generator"])
        self.epoch = int(state["epoch"])
        self.curve = [float(v) for v in state["curve"]]
        # Checkpoints from before the loss was recorded have none: those epochs' losses are unknown.
        losses = state.get("loss_curve", [None] * len(self.curve))
        self.loss_curve = [None if v is None else float(v) for v in losses]


def train_epochs(model: nn.Module, train: Split, val: Split, epochs: int, settings: SGDSettings, seed: int,
                 device: torch.device, on_epoch: Callable[[int, float], None] | None = None, *,
                 bf16: bool = False, channels_last: bool = False) -> list[float]:
    """Train for `epochs` epochs (the schedule spans them); returns validation accuracy per epoch. `bf16` and
    `channels_last` are the `Trainer`'s."""
    return fit(model, train, val, epochs, settings, seed, device, on_epoch, bf16=bf16,
               channels_last=channels_last).curve


def fit(model: nn.Module, train: Split, val: Split, epochs: int, settings: SGDSettings, seed: int,
        device: torch.device, on_epoch: Callable[[int, float], None] | None = None, *,
        bf16: bool = False, channels_last: bool = False, resume: TrialCheckpoint | None = None) -> Trainer:
    """`train_epochs`, returning the trainer itself: its `curve` and `loss_curve` are what an estimator reports.
    With `resume`, training continues from that checkpoint and keeps it up to date (`Trainer.run_resumable`)."""
    trainer = Trainer(model, train, val, settings, epochs, seed, device, bf16=bf16, channels_last=channels_last)
    if resume is None:
        trainer.run(epochs, on_epoch)
    else:
        trainer.run_resumable(epochs, on_epoch, resume, {"seed": seed, "epochs": epochs})
    return trainer
