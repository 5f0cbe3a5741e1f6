"""Reads of the outbox."""

from __future__ import annotations

from django.db.models import QuerySet

from backups.notifications.models import Delivery


def list_deliveries(*, status: str | None = None, channel: str | None = None) -> QuerySet[Delivery]:
    queryset = Delivery.objects.select_related("notification").order_by("-created_at", "-id")
    if status:
        queryset = queryset.filter(status=status)
    if channel:
        queryset = queryset.filter(channel=channel)
    return queryset
