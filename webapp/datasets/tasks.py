"""The Celery task that decodes an accepted upload: a thin, idempotent wrapper around `dataset_process`."""
from __future__ import annotations

import os
import socket

from celery import shared_task


@shared_task(name="webapp.process_dataset", bind=True, acks_late=True, reject_on_worker_lost=True)
def process_dataset(self, dataset_id: int) -> str:
    from webapp.datasets.services import dataset_process

    return dataset_process(dataset_id, f"{socket.gethostname()}:{os.getpid()}:{self.request.id}")
