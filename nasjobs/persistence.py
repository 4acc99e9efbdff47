"""The one adapter between the engine and Django: a Store that reads and writes experiment rows."""
from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from django.conf import settings

from nasjobs.artifacts import ArtifactStore
from nasjobs.datasets import DATASETS
from nasjobs.search import SearchCancelled, SearchRunner, TrialRecord, resolve_device
from webapp.experiments import services
from webapp.experiments.models import Experiment

log = logging.getLogger(__name__)


class DjangoStore:
    """Persists a search through the experiment services; heartbeats are written at most every few seconds."""

    def __init__(self, experiment_id: int, worker: str, heartbeat_every: float = 2.0) -> None:
        self.experiment_id = experiment_id
        self.worker = worker
        self.heartbeat_every = heartbeat_every
        self._last_beat = 0.0

    def load(self) -> tuple[dict[str, Any] | None, list[TrialRecord]]:
        return services.experiment_load_progress(self.experiment_id)

    def record_trial(self, trial: TrialRecord, strategy_state: dict[str, Any], kept: list[int]) -> None:
        services.trial_record(self.experiment_id, self.worker, trial, strategy_state, kept)
        self._last_beat = time.monotonic()

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat < self.heartbeat_every:
            return
        self._last_beat = now
        status = services.experiment_heartbeat(self.experiment_id, self.worker)
        if status is None:
            raise services.LostClaim(f"experiment {self.experiment_id} was taken over by another worker")
        if status == Experiment.Status.CANCELLED:
            raise SearchCancelled()

    def record_epoch(self, record: dict[str, Any]) -> None:
        services.search_epoch_record(self.experiment_id, self.worker, record)
        self._last_beat = time.monotonic()

    def finish(self, best_number: int, test_acc: float | None, stop_reason: str) -> None:
        services.experiment_finish(self.experiment_id, self.worker, best_number, test_acc, stop_reason)


def run_experiment_now(experiment_id: int, worker: str) -> str:
    """Claim and run (or resume) an experiment in this process. Returns what happened:
    "done" (finished or failed here), "cancelled", "lost" (another worker took over), "busy" (held by a live
    worker: try later), or "finished" (nothing left to do)."""
    if not services.experiment_claim(experiment_id, worker):
        status = Experiment.objects.filter(pk=experiment_id).values_list("status", flat=True).first()
        return "busy" if status == Experiment.Status.RUNNING else "finished"
    experiment = Experiment.objects.get(pk=experiment_id)
    try:
        runner = SearchRunner(experiment.spec(), DjangoStore(experiment_id, worker),
                              ArtifactStore(settings.NAS_ARTIFACTS_DIR, experiment_id),
                              resolve_device(settings.NAS_DEVICE))
        runner.run()
    except SearchCancelled:
        log.info("experiment %s cancelled", experiment_id)
        return "cancelled"
    except services.LostClaim as exc:
        log.warning("%s", exc)
        return "lost"
    except Exception as exc:  # the experiment fails with a readable reason; the worker lives on
        log.exception("experiment %s failed", experiment_id)
        services.experiment_fail(experiment_id, worker, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return "done"
    return "done"


def run_calibration_now(calibration_id: int, worker: str) -> str:
    """Claim and run a calibration in this process; "done" or "finished" (already taken or done)."""
    from nasjobs.calibration import calibrate
    from nasjobs.options import parse_config
    from webapp.experiments.models import Calibration

    if not services.calibration_claim(calibration_id, worker):
        return "finished"
    calibration = Calibration.objects.select_related("experiment").get(pk=calibration_id)
    experiment = calibration.experiment
    try:
        spec = experiment.spec()
        space_cls, estimator_cls = spec.component_class("space"), spec.component_class("estimator")
        space = space_cls(parse_config(space_cls.Config, experiment.options.get("space")))
        dataset = DATASETS.get(experiment.dataset)()
        device = resolve_device(settings.NAS_DEVICE)
        estimator = estimator_cls(space, dataset, parse_config(estimator_cls.Config, experiment.options.get("estimator")),
                                  device)
        _, trials = services.experiment_load_progress(experiment.pk)
        result = calibrate(space, dataset, estimator, trials, calibration.k, calibration.epochs, calibration.seed,
                           device)
    except Exception as exc:  # a readable reason on the page; the worker lives on
        log.exception("calibration %s failed", calibration_id)
        services.calibration_fail(calibration_id, worker, f"{type(exc).__name__}: {exc}")
        return "done"
    services.calibration_finish(calibration_id, worker, result)
    return "done"
