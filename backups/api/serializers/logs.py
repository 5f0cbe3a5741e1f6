"""The logs query and its answer."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class LogsQuerySerializer(serializers.Serializer):
    source = serializers.ChoiceField(
        choices=["script", "service", "audit", "run"], default="script", required=False
    )
    lines = serializers.IntegerField(min_value=1, max_value=5000, default=200, required=False)
    run = serializers.UUIDField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("source") == "run" and not attrs.get("run"):
            raise serializers.ValidationError({"run": ["Required with source=run."]})
        return attrs


class LogEntrySerializer(serializers.Serializer):
    timestamp = serializers.CharField(allow_null=True)
    level = serializers.CharField()
    message = serializers.CharField()


class LogsSerializer(serializers.Serializer):
    source = serializers.CharField()
    entries = LogEntrySerializer(many=True)
