"""Full training with Google Vizier's median stopping rule: a trial falling behind completed trials stops early."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from nasjobs.datasets import Dataset
from nasjobs.estimators.base import EpochHook, EvalResult
from nasjobs.estimators.train import TrainConfig, TrainEstimator
from nasjobs.options import option
from nasjobs.spaces.base import SearchSpace
from nasjobs.training import Trainer, TrialCheckpoint

STATISTICS = ("running_average", "running_best")


@dataclass(frozen=True)
class MedianStoppingConfig(TrainConfig):
    grace_epochs: int = option(2, "Never stop a trial before this many epochs", min=1, max=10_000)
    min_completed: int = option(3, "Completed trials needed (with a curve reaching epoch k) before the rule "
                                   "applies at epoch k", min=1, max=10_000)
    statistic: str = option("running_average", "What the median is taken of, per completed trial up to epoch k: "
                                                "'running_average' (Vizier's rule) or 'running_best'",
                            choices=STATISTICS)


class _Stopped(Exception):
    """Raised from the epoch hook to end training; carries the median the trial fell below."""

    def __init__(self, median: float) -> None:
        self.median = median


def running_statistic(curve: Sequence[float], k: int, statistic: str) -> float:
    """o-hat of a completed trial up to step k: the mean of its first k values (Golovin et al. 2017, §3.2.2:
    o-hat_{1:s} = (1/s) sum_{i<=s} o_i), or their maximum for the `running_best` variant."""
    head = curve[:k]
    return sum(head) / k if statistic == "running_average" else max(head)


class MedianStoppingEstimator(TrainEstimator):
    """Train up to `budget` epochs, stopping early by the median stopping rule of Golovin et al. 2017 ("Google
    Vizier: a service for black-box optimization", KDD, §3.2.2): a pending trial is stopped at step s if its
    best objective value by step s is strictly worse than the median of the running averages o-hat_{1:s} of all
    completed trials. Steps are epochs; the objective is validation accuracy.

    One instance lives for the whole experiment and keeps the curves of the trials it trained to the end;
    `load_history` seeds it with stored curves when a search resumes. Stopped trials are not "completed" and do
    not join the history. A stopped trial keeps its last measured figure (`val_acc` = its last epoch's accuracy,
    its weights as of that epoch) and `fidelity["stopped_at_epoch"]` says where it stopped, so it is recorded,
    not lost. The learning-rate schedule is the full budget's cosine, so a completed trial equals `train`'s.
    """

    name = "median_stopping"
    title = "Train with median stopping (Vizier)"
    Config = MedianStoppingConfig

    def __init__(self, space: SearchSpace, dataset: Dataset, config: MedianStoppingConfig,
                 device: torch.device) -> None:
        super().__init__(space, dataset, config, device)
        self.history: list[list[float]] = []

    def load_history(self, curves: Iterable[Sequence[float]]) -> None:
        """Add learning curves of trials that ran to their end (on resume: the stored curves of trials whose
        fidelity has no `stopped_at_epoch`)."""
        self.history.extend([float(v) for v in curve] for curve in curves if len(curve) > 0)

    def median_at(self, k: int) -> float | None:
        """The median over completed trials of their statistic up to epoch k; None while too few reach k."""
        values = [running_statistic(c, k, self.config.statistic) for c in self.history if len(c) >= k]
        if len(values) < self.config.min_completed:
            return None
        return statistics.median(values)

    def should_stop(self, curve: Sequence[float]) -> float | None:
        """The median that `curve` (values of epochs 1..k) falls strictly below, or None to go on."""
        k = len(curve)
        if k < self.config.grace_epochs:
            return None
        median = self.median_at(k)
        if median is not None and max(curve) < median:
            return median
        return None

    def evaluate(self, arch: Any, budget: int, *, seed: int, hook: EpochHook | None = None,
                 resume: TrialCheckpoint | None = None) -> EvalResult:
        if budget < 1:
            raise ValueError("median stopping needs a budget of at least one epoch")
        model = self._build(arch, seed)
        params, flops = self.cost(arch, model)
        trainer = Trainer(model, self.dataset.train, self.dataset.val, self._settings(), budget, seed, self.device)

        def on_epoch(epoch: int, acc: float) -> None:
            if hook is not None:
                hook(epoch, acc)
            median = self.should_stop(trainer.curve) if epoch < budget else None
            if median is not None:
                raise _Stopped(median)

        c = self.config
        fidelity: dict[str, Any] = {"estimator": self.name, "full_epochs": budget, "data_fraction": 1.0,
                                    "grace_epochs": c.grace_epochs, "statistic": c.statistic,
                                    "completed_trials": len(self.history)}
        started = time.perf_counter()
        try:
            if resume is None:
                trainer.run(budget, on_epoch)
            else:  # the rule is not applied again to the epochs the checkpoint holds: they passed it then
                trainer.run_resumable(budget, on_epoch, resume, {"seed": seed, "epochs": budget})
        except _Stopped as stop:
            fidelity.update({"stopped_at_epoch": len(trainer.curve), "median_at_stop": stop.median})
        else:
            self.history.append(list(trainer.curve))
        curve = list(trainer.curve)
        seconds = trainer.earlier_seconds + time.perf_counter() - started
        fidelity["epochs"] = len(curve)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return self.mark_chance_level(EvalResult(val_acc=curve[-1], params=params, flops=flops,
                                                 train_seconds=seconds, fidelity=fidelity, curve=curve,
                                                 state=state, loss_curve=trainer.loss_curve,
                                                 resumed_from_epoch=trainer.resumed_from_epoch))
