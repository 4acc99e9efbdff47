"""Read-only queries for pages, the JSON API and the `nas` command."""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from webapp.experiments.models import Calibration, Experiment, SearchEpoch, Trial


def experiment_list() -> QuerySet[Experiment]:
    return Experiment.objects.select_related("created_by").order_by("-created_at", "-id")


def experiment_leaderboard(experiment: Experiment, limit: int | None = None) -> QuerySet[Trial]:
    trials = experiment.trials.order_by("-val_acc", "number")
    return trials[:limit] if limit else trials


def experiment_best_trial(experiment: Experiment) -> Trial | None:
    if experiment.best_trial_number is None:
        return None
    return experiment.trials.filter(number=experiment.best_trial_number).first()


def experiment_exploration(experiment: Experiment) -> dict[str, Any]:
    """How the search balanced exploring new architectures against refining the best one."""
    last = experiment.trials.order_by("-number").first()
    proposals = last.proposals if last else 0
    distances = list(experiment.trials.exclude(distance_to_incumbent=None).values_list("distance_to_incumbent",
                                                                                        flat=True))
    return {"unique_architectures": experiment.trials_done, "proposals": proposals,
            "mean_distance_to_incumbent": sum(distances) / len(distances) if distances else None}


def experiment_elapsed_seconds(experiment: Experiment) -> float | None:
    if experiment.started_at is None:
        return None
    end = experiment.finished_at or timezone.now()
    return max(0.0, (end - experiment.started_at).total_seconds())


def trial_to_json(trial: Trial, rank: int | None = None) -> dict[str, Any]:
    data = {"number": trial.number, "arch": trial.arch_key, "arch_display": trial.arch_display,
            "val_acc": trial.val_acc, "params": trial.params, "flops": trial.flops,
            "train_seconds": round(trial.train_seconds, 3), "estimator": trial.estimator, "fidelity": trial.fidelity,
            "search_seconds": round(trial.search_seconds, 3), "proposals": trial.proposals,
            "distance_to_incumbent": trial.distance_to_incumbent, "evaluations": trial.evaluations}
    if rank is not None:
        data["rank"] = rank
    return data


def calibration_to_json(calibration: Calibration | None) -> dict[str, Any] | None:
    if calibration is None:
        return None
    return {"id": calibration.pk, "status": calibration.status, "k": calibration.k, "epochs": calibration.epochs,
            "reference": calibration.reference, "kendall_tau": calibration.kendall_tau,
            "spearman_rho": calibration.spearman_rho, "pairs": calibration.pairs, "seconds": calibration.seconds,
            "error": calibration.error}


def epoch_to_json(epoch: SearchEpoch) -> dict[str, Any]:
    return {"epoch": epoch.epoch, "train_loss": epoch.train_loss, "train_acc": epoch.train_acc,
            "val_loss": epoch.val_loss, "val_acc": epoch.val_acc, "alphas": epoch.alphas, "ops": epoch.ops,
            "edges": epoch.edges, "genotype": epoch.genotype, "param_free_fraction": epoch.param_free_fraction,
            "stopped_early": epoch.stopped_early, "seconds": epoch.seconds}


def experiment_summary(experiment: Experiment, leaderboard: int | None = 0) -> dict[str, Any]:
    """The experiment as one JSON object; `leaderboard` rows included (None: all, 0: none)."""
    best = experiment_best_trial(experiment)
    data: dict[str, Any] = {
        "id": experiment.pk, "name": experiment.name, "status": experiment.status,
        "dataset": experiment.dataset, "space": experiment.space, "strategy": experiment.strategy,
        "estimator": experiment.estimator, "budget": experiment.budget, "epochs": experiment.epochs,
        "seed": experiment.seed, "top_k": experiment.top_k, "options": experiment.options,
        "patience": experiment.patience, "max_seconds": experiment.max_seconds,
        "stop_reason": experiment.stop_reason, "trials_done": experiment.trials_done,
        "exploration": experiment_exploration(experiment),
        "trust": calibration_to_json(experiment.calibrations.first()),
        "best": None if best is None else {
            "number": best.number, "arch": best.arch_key, "arch_display": best.arch_display,
            "val_acc": best.val_acc, "test_acc": experiment.test_acc, "params": best.params, "flops": best.flops},
        "error": experiment.error,
        "created_at": experiment.created_at.isoformat() if experiment.created_at else None,
        "started_at": experiment.started_at.isoformat() if experiment.started_at else None,
        "finished_at": experiment.finished_at.isoformat() if experiment.finished_at else None,
        "elapsed_seconds": experiment_elapsed_seconds(experiment),
    }
    if leaderboard != 0:
        rows = experiment_leaderboard(experiment, leaderboard)
        data["leaderboard"] = [trial_to_json(t, rank) for rank, t in enumerate(rows, start=1)]
        data["search_epochs"] = [epoch_to_json(e) for e in experiment.search_epochs.order_by("epoch")]
    return data
