"""Deliveries of notifications, read-only: where each went (masked), how often it was tried, what the
receiver answered and how long it took."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from backups.admin.site import SuperuserReadOnlyAdmin, badge
from backups.notifications.models import Delivery


@admin.register(Delivery)
class DeliveryAdmin(SuperuserReadOnlyAdmin):
    list_display = (
        "created_at",
        "event",
        "channel",
        "target",
        "status_badge",
        "attempts",
        "last_status_code",
        "latency",
        "short_error",
    )
    list_filter = ("status", "channel", "notification__event", ("created_at", admin.DateFieldListFilter))
    search_fields = ("target", "last_error", "notification__title")
    date_hierarchy = "created_at"
    list_per_page = 100
    fieldsets = (
        (None, {"fields": ("event", "title", "channel", "target", "status_badge")}),
        (
            "Attempts",
            {
                "fields": (
                    "attempts",
                    "last_status_code",
                    "last_error",
                    "latency",
                    "first_attempt_at",
                    "next_attempt_at",
                    "delivered_at",
                    "created_at",
                )
            },
        ),
        ("Message", {"fields": ("message_text",), "classes": ("collapse",)}),
    )
    readonly_fields = (
        "event",
        "title",
        "channel",
        "target",
        "status_badge",
        "attempts",
        "last_status_code",
        "last_error",
        "latency",
        "first_attempt_at",
        "next_attempt_at",
        "delivered_at",
        "created_at",
        "message_text",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        return super().get_queryset(request).select_related("notification")

    @admin.display(description="Event", ordering="notification__event")
    def event(self, delivery: Delivery) -> str:
        return delivery.notification.event

    @admin.display(description="Title")
    def title(self, delivery: Delivery) -> str:
        return delivery.notification.title

    @admin.display(description="Status", ordering="status")
    def status_badge(self, delivery: Delivery) -> SafeString:
        return badge(delivery.status)

    @admin.display(description="Latency", ordering="latency_ms")
    def latency(self, delivery: Delivery) -> str:
        return "—" if delivery.latency_ms is None else f"{delivery.latency_ms} ms"

    @admin.display(description="Last error")
    def short_error(self, delivery: Delivery) -> str:
        error = delivery.last_error
        return error if len(error) <= 80 else error[:79] + "…"

    @admin.display(description="Text")
    def message_text(self, delivery: Delivery) -> str:
        return format_html('<pre style="margin:0;white-space:pre-wrap">{}</pre>', delivery.notification.text)
