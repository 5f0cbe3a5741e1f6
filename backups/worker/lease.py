"""Who runs backups: one lease row. A worker holds it while it renews it; a second worker waits until
the holder stops renewing (crashed), then takes over. No transaction is held meanwhile."""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

logger = logging.getLogger(__name__)

RENEW_SECONDS = 3.0


class WorkerLease(models.Model):
    """One row: who holds the right to run backups."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    holder = models.CharField(max_length=200, blank=True, default="")
    renewed_at = models.DateTimeField(default=timezone.now)
    acquired_at = models.DateTimeField(default=timezone.now)

    LEASE_SECONDS = 20

    def __str__(self) -> str:
        return f"worker lease held by {self.holder or 'nobody'}"

    @property
    def expires_at(self) -> datetime:
        return self.renewed_at + timedelta(seconds=self.LEASE_SECONDS)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_name(label: str, nonce: str) -> str:
    """`<label>@<host>:<pid>:<nonce>`: enough for another worker on the same host to see it died."""
    return f"{label}@{socket.gethostname()}:{os.getpid()}:{nonce}"


class Lease:
    """This process's side of the lease: renews at most every RENEW_SECONDS, says when it was lost."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.holding = False
        self.last_renew = 0.0

    def hold(self, force_renew: bool = False) -> tuple[bool, bool]:
        """(holding now, just acquired)."""
        now_mono = time.monotonic()
        if self.holding and not force_renew and now_mono - self.last_renew < RENEW_SECONDS:
            return True, False
        now = timezone.now()
        WorkerLease.objects.get_or_create(id=1)
        stale = now - timedelta(seconds=WorkerLease.LEASE_SECONDS)
        won = WorkerLease.objects.filter(
            Q(holder=self.holder) | Q(holder="") | Q(renewed_at__lt=stale), id=1
        ).update(holder=self.holder, renewed_at=now)
        if not won:
            won = self._take_over_dead_local_holder(now)
        was_holding, self.holding = self.holding, bool(won)
        self.last_renew = now_mono
        acquired = self.holding and not was_holding
        if acquired:
            WorkerLease.objects.filter(id=1).update(acquired_at=now)
            logger.info("worker holds the lease", extra={"worker": self.holder})
        elif was_holding and not self.holding:
            logger.error("worker lost the lease", extra={"worker": self.holder})
        return self.holding, acquired

    def _take_over_dead_local_holder(self, now: datetime) -> int:
        """A holder on this host whose process is gone (SIGKILL, OOM) need not be waited for."""
        holder = WorkerLease.objects.filter(id=1).values_list("holder", flat=True).first() or ""
        try:
            _, host_pid, _ = holder.rsplit(":", 2)
            host = holder.split("@", 1)[1].rsplit(":", 2)[0]
            pid = int(host_pid)
        except (ValueError, IndexError):
            return 0
        if host != socket.gethostname() or pid == os.getpid() or pid_alive(pid):
            return 0
        return WorkerLease.objects.filter(id=1, holder=holder).update(holder=self.holder, renewed_at=now)

    def release(self) -> None:
        if self.holding:
            WorkerLease.objects.filter(id=1, holder=self.holder).update(holder="")
            self.holding = False


def worker_alive() -> bool:
    """A worker renewed the lease within WORKER_STALE_SECONDS."""
    lease = WorkerLease.objects.filter(id=1).first()
    if lease is None or not lease.holder:
        return False
    return lease.renewed_at >= timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS)


def worker_last_seen_seconds() -> float | None:
    """Seconds since a worker last renewed the lease; None when none ever held it."""
    lease = WorkerLease.objects.filter(id=1).exclude(holder="").first()
    if lease is None:
        return None
    return max(0.0, (timezone.now() - lease.renewed_at).total_seconds())
