"""Who did what: the `Actor` every request becomes once, and the append-only `AuditEvent` trail that
every state-changing service writes in the same transaction as its change."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from backups.errors import Conflict

_FROM_REQUEST: Any = object()


@dataclass(frozen=True)
class Actor:
    """The caller of a service: a user id (from a token or an admin session) or the name of a part of
    the service itself (`schedule`, `cli`, `worker`, `retention`), and the client address if any."""

    id: str
    ip: str | None = None

    def __str__(self) -> str:
        return self.id

    @classmethod
    def from_request(cls, request: Any, *, user: Any = _FROM_REQUEST) -> Actor:
        """One place that reads who is asking and from where, for the API, the admin and the dashboard.
        `user` replaces `request.user` where reading it would authenticate again (DRF's error handler)."""
        from backups.auth import actor_of

        who = getattr(request, "user", None) if user is _FROM_REQUEST else user
        return cls(id=actor_of(who), ip=client_ip(request))


SCHEDULE = Actor("schedule")
CLI = Actor("cli")
WORKER = Actor("worker")


def client_ip(request: Any) -> str | None:
    """The peer's address as the server saw it (forwarded headers are applied by the server, and only
    when configured to trust them); anything that is not a valid IP is not stored."""
    raw = (getattr(request, "META", None) or {}).get("REMOTE_ADDR") or ""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


class AuditEvent(models.Model):
    """Append-only trail: every change, download and refused authentication."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=200, blank=True, default="")
    action = models.CharField(max_length=64, db_index=True)
    target = models.CharField(max_length=300, blank=True, default="")
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    outcome = models.CharField(max_length=16, default="ok")  # ok | refused | failed | incomplete
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target} {self.outcome}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValueError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("audit events are append-only")


def audit(
    action: str,
    *,
    actor: Actor,
    target: str = "",
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        action=action,
        actor=actor.id,
        target=target[:300],
        outcome=outcome,
        client_ip=actor.ip,
        details=details or {},
    )


def refuse(
    action: str, message: str, *, actor: Actor, target: str = "", reason: str, **extra: Any
) -> Conflict:
    """Audit a refused operation (committed, whatever the caller does next) and build its 409."""
    with transaction.atomic():
        audit(action, actor=actor, target=target, outcome="refused", details={"reason": reason})
    return Conflict(message, **extra)
