"""Leases on jobs that are one row each (an export, a calibration, a dataset's decoding): claimed, renewed, handed
back and swept by conditional UPDATEs, and the thread that renews a running job's lease."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from django.conf import settings
from django.db import connection, models
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from nasjobs.records import SearchCancelled

log = logging.getLogger(__name__)


class LostClaim(Exception):
    """Another worker took the job over (our lease expired), or its row is gone; stop without writing."""


def lease_seconds() -> float:
    return float(settings.NAS_LEASE_SECONDS)


def heartbeat_seconds() -> float:
    """How often a running job renews its lease: a third of it, at most NAS_HEARTBEAT_SECONDS."""
    return min(float(settings.NAS_HEARTBEAT_SECONDS), lease_seconds() / 3)


@dataclass(frozen=True)
class RowJobs:
    """One kind of row job. `model` has `status`, `claimed_by`, `heartbeat_at`, `attempts` and a start time (the
    field named `started`). A queued row has status `queued` and no worker; a running one has status `running`,
    the worker that holds it, and the heartbeat that worker renews (`Lease`). A row whose heartbeat is older than
    NAS_LEASE_SECONDS, or missing, has lost its worker: the next claim takes it, the sweep queues it again.
    `queued` and `running` may be one status (a dataset is `processing` either way): the worker tells them apart.
    A row set to `cancelled` tells its worker to stop at the next heartbeat."""

    model: type[models.Model]
    queued: str
    running: str
    enqueue: Callable[[int], None]
    cancelled: str | None = None
    started: str = "started_at"

    def _silent(self, now: datetime) -> Q:
        stale = now - timedelta(seconds=lease_seconds())
        return Q(Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True), ~Q(claimed_by=""), status=self.running)

    def mine(self, pk: int, worker: str) -> QuerySet:
        """The row, while `worker` holds it: what its finish and failure update, so a lost claim writes nothing."""
        return self.model.objects.filter(pk=pk, claimed_by=worker, status=self.running)

    def claim(self, pk: int, worker: str) -> bool:
        """Take a queued row, or a running one whose worker went silent past the lease (one conditional UPDATE
        decides who runs it)."""
        now = timezone.now()
        claimable = Q(status=self.queued, claimed_by="") | self._silent(now)
        return bool(self.model.objects.filter(claimable, pk=pk).update(
            status=self.running, claimed_by=worker, heartbeat_at=now, attempts=F("attempts") + 1,
            **{self.started: now}))

    def heartbeat(self, pk: int, worker: str) -> str:
        """Renew the lease: "held", "cancelled" (someone cancelled the job) or "lost" (another worker has it, or
        the row was deleted)."""
        if self.mine(pk, worker).update(heartbeat_at=timezone.now()):
            return "held"
        if self.cancelled and self.model.objects.filter(pk=pk, status=self.cancelled).exists():
            return "cancelled"
        return "lost"

    def hand_back(self, pk: int, worker: str) -> bool:
        """Put an unfinished job back in the queue (its worker is stopping), for the next worker."""
        if self.mine(pk, worker).update(status=self.queued, claimed_by="", heartbeat_at=None):
            self.enqueue(pk)
            return True
        return False

    def recover(self) -> list[int]:
        """Queue again every unfinished row: queued ones (their message may have been lost with a restarted Redis)
        and running ones (their worker may be dead; the claim waits out the lease)."""
        ids = list(self.model.objects.filter(status__in={self.queued, self.running}).values_list("pk", flat=True))
        for pk in ids:
            self.enqueue(pk)
        return ids

    def sweep(self) -> list[int]:
        """Rows whose worker went silent past the lease go back to the queue (each a conditional UPDATE, so several
        workers sweeping at once queue each once)."""
        now, requeued = timezone.now(), []
        for pk in list(self.model.objects.filter(self._silent(now)).values_list("pk", flat=True)):
            if self.model.objects.filter(self._silent(now), pk=pk).update(status=self.queued, claimed_by="",
                                                                          heartbeat_at=None):
                self.enqueue(pk)
                requeued.append(pk)
        return requeued


class Lease:
    """Renews a claim from a thread every few seconds, whatever the job is doing (a long batch, a test pass), and
    raises in the job (`check`, called between batches) once the claim is lost or the job cancelled."""

    def __init__(self, beat: Callable[[], str], every: float) -> None:
        self.beat, self.every = beat, every
        self.state = "held"  # or "cancelled" / "lost"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def __enter__(self) -> "Lease":
        # A claim made inside a transaction not yet committed (a test's, a caller's) is invisible to every other
        # worker, so there is nothing to renew; a thread would only wait on the lock that transaction holds.
        if not connection.in_atomic_block:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.every) and self.state == "held":
                try:
                    self.state = self.beat()
                except Exception:  # the database away for a moment: try again at the next beat
                    log.exception("could not renew a lease")
        finally:
            connection.close()  # this thread's own connection

    def check(self) -> None:
        if self.state == "cancelled":
            raise SearchCancelled()
        if self.state == "lost":
            raise LostClaim("another worker took this job over")
