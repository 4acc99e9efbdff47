"""Every kind of job at once: what a worker queues again when it connects (`jobs_recover`, also `nas recover`) and
what its sweep queues again after a worker went silent (`jobs_sweep`)."""
from __future__ import annotations


def jobs_recover() -> dict[str, list[int]]:
    """Queue again every unfinished job, by kind: experiments (and their retrainings), exports, calibrations and
    datasets still decoding."""
    from webapp.datasets.services import datasets_recover
    from webapp.experiments.services import calibrations_recover, experiments_recover, exports_recover

    return {"experiments": experiments_recover(), "exports": exports_recover(),
            "calibrations": calibrations_recover(), "datasets": datasets_recover()}


def jobs_sweep() -> dict[str, list[int]]:
    """Queue again every job whose worker went silent past the lease, by kind (`experiments_sweep`, and the
    datasets' decoding)."""
    from webapp.datasets.services import datasets_sweep
    from webapp.experiments.runner import experiments_sweep

    return {**experiments_sweep(), "datasets": datasets_sweep()}
