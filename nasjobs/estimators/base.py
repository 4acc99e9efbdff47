"""The performance-estimation interface: an architecture and a budget in, an estimate of its quality out."""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from nasjobs.datasets import Dataset
from nasjobs.spaces.base import SearchSpace

# Called after each epoch with (epoch, validation accuracy); may raise to stop the evaluation.
EpochHook = Callable[[int, float], None]


@dataclass
class EvalResult:
    val_acc: float  # fraction in [0, 1]
    params: int
    flops: int  # multiply-adds for one input
    train_seconds: float
    fidelity: dict[str, Any]  # what produced the figure: epochs, data fraction, ...
    curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch
    state: dict[str, torch.Tensor] | None = None  # trained weights, when the estimator trains a network
    loss_curve: list[float | None] = field(default_factory=list)  # mean training loss of each epoch of `curve`
    resumed_from_epoch: int | None = None  # the epoch training continued at from a trial checkpoint (None: from 0)


@dataclass(frozen=True)
class Figure:
    """What an estimator's figure (a trial's `val_acc`) is: an accuracy (a fraction in [0, 1], shown as a
    percentage) or a score (a training-free proxy, shown as a number with its name)."""

    kind: str  # "accuracy" or "score"
    name: str  # as pages label it: "validation accuracy", "log synflow score"
    short: str  # a column heading: "Val acc", "Score"

    @property
    def is_accuracy(self) -> bool:
        return self.kind == "accuracy"

    def format(self, value: float | None) -> str:
        if value is None:
            return "–"
        return f"{100 * value:.2f}%" if self.is_accuracy else f"{value:.4g}"

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name}


ACCURACY = Figure("accuracy", "validation accuracy", "Val acc")


class Estimator(ABC):
    name: ClassVar[str]
    title: ClassVar[str]
    Config: ClassVar[type]
    # A folder private to the experiment for files an estimator keeps between trials and restarts (a trained
    # supernet, say); set by the search loop, None when the estimator runs alone.
    workdir: Path | None = None
    # Whether a trial trains a network: what an experiment's compute (trials x epochs) is counted on.
    trains_networks: ClassVar[bool] = True
    # Whether `cost` has figures of its own (a benchmark's table) rather than those of the space's network: the
    # deployment limits (`nasjobs.constraints`) then ask an instance, not `nasjobs.metrics.network_cost`.
    own_cost: ClassVar[bool] = False
    # Whether its figure is the validation accuracy of a network it trained (or one that inherited trained
    # weights): such a figure no better than guessing says the training failed, and `evaluate` marks it with
    # `mark_chance_level`. A training-free proxy's score or a benchmark table's lookup carries no such mark.
    marks_chance_level: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, dataset: Dataset, config: Any, device: torch.device) -> None:
        self.space = space
        self.dataset = dataset
        self.config = config
        self.device = device
        self.costs: dict[str, tuple[int, int]] = {}  # architecture key -> (parameters, multiply-adds)

    @classmethod
    def figure(cls, config: Any) -> Figure:
        """What this estimator's figure is (with `config`): by default the validation accuracy."""
        return ACCURACY

    @classmethod
    def check_space(cls, config: Any, space: SearchSpace) -> None:
        """Raise ValueError with a readable reason if this estimator, with `config`, cannot judge `space`'s
        architectures (an `OptionError` whose key is `component.option` points at the option to change).

        Called when an experiment is submitted, so an impossible combination is a form error, not a failed run.
        """

    @classmethod
    def check_dataset(cls, config: Any, dataset: str, kind: str) -> None:
        """Raise ValueError with a readable reason if this estimator, with `config`, cannot use `dataset` (of
        `kind`). By default anything but a lookup table, which has no samples to train or score on."""
        from nasjobs.datasets import BENCHMARK_KIND

        if kind == BENCHMARK_KIND:
            raise ValueError(f"{dataset!r} is a NAS-Bench-201 lookup table with no samples; only the benchmark "
                             f"estimator can use it, not {cls.name}")

    @abstractmethod
    def evaluate(self, arch: Any, budget: int, *, seed: int, hook: EpochHook | None = None) -> EvalResult:
        """Estimate `arch`'s validation accuracy, spending `budget` (epochs for training estimators).

        An estimator that trains one network for the whole trial may also take `resume`, a
        `nasjobs.training.TrialCheckpoint` (or None): it then continues from the state saved there, keeps it up to
        date between epochs, and says in `EvalResult.resumed_from_epoch` where it continued (`resumable`)."""

    @property
    def resumable(self) -> bool:
        """Whether `evaluate` takes `resume` (a trial checkpoint): the estimator declares it by the keyword."""
        return "resume" in inspect.signature(self.evaluate).parameters

    def network(self, arch: Any, seed: int = 0) -> torch.nn.Module:
        """The network whose weights `evaluate` returns as `state` (freshly initialised with `seed`): the space's
        own network unless the estimator trains a proxy of it (fewer channels, say)."""
        from nasjobs.training import seeded_init

        ds = self.dataset
        return seeded_init(lambda: self.space.build(arch, ds.input_shape, ds.num_classes), seed)

    def cost(self, arch: Any, model: torch.nn.Module | None = None) -> tuple[int, int]:
        """Parameters and multiply-adds of `arch`'s network (the space's, not a proxy's) on this dataset,
        computed once per architecture (`nasjobs.metrics.network_cost`: the space's formula where it has one, else
        counted on `model`, the network the estimator built anyway, or on one built for it). A re-evaluation or a
        promotion to the next rung reuses the figures; the deployment limits count the same way."""
        key = self.space.to_str(arch)
        if key not in self.costs:
            from nasjobs.metrics import network_cost

            self.costs[key] = network_cost(self.space, arch, self.dataset.input_shape, self.dataset.num_classes, model)
        return self.costs[key]

    def mark_chance_level(self, result: EvalResult) -> EvalResult:
        """`result`, with `fidelity["chance_level"] = True` when its accuracy is no better than always guessing the
        validation split's most common class (`nasjobs.training.at_chance`): training that diverged without a
        NaN loss (a NaN fails the trial), whose figure must be flagged rather than ranked as an ordinary result.
        Every estimator that `marks_chance_level` calls this on what `evaluate` returns, and only those."""
        from nasjobs.training import at_chance

        result.fidelity.pop("chance_level", None)
        if self.marks_chance_level and at_chance(result.val_acc, self.dataset.val.y):
            result.fidelity["chance_level"] = True
        return result

    @abstractmethod
    def test_accuracy(self, arch: Any, state: dict[str, torch.Tensor]) -> float:
        """Accuracy on the held-out test split of a network trained by `evaluate`."""
