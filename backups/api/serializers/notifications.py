"""Deliveries of notifications, and the answer of the test."""

from __future__ import annotations

from rest_framework import serializers

from backups.notifications.models import Delivery, DeliveryStatus


class DeliverySerializer(serializers.ModelSerializer):
    event = serializers.CharField(source="notification.event", read_only=True)
    notification_id = serializers.CharField(read_only=True)
    status = serializers.ChoiceField(choices=DeliveryStatus.choices, read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "notification_id",
            "event",
            "channel",
            "target",
            "status",
            "attempts",
            "last_status_code",
            "last_error",
            "latency_ms",
            "next_attempt_at",
            "created_at",
            "delivered_at",
        ]
        read_only_fields = fields


class TestResultSerializer(serializers.Serializer):
    channel = serializers.CharField()
    target = serializers.CharField(help_text="masked")
    ok = serializers.BooleanField()
    detail = serializers.CharField()


class TestResultsSerializer(serializers.Serializer):
    results = TestResultSerializer(many=True)
