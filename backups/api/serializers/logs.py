"""The logs query and its answer."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from backups.status.logs import SOURCES


class LogsQuerySerializer(serializers.Serializer):
    source = serializers.ChoiceField(choices=list(SOURCES), default="script", required=False)
    lines = serializers.IntegerField(min_value=1, max_value=5000, default=200, required=False)
    run = serializers.UUIDField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # A query string's empty value (`?source=`) would silently take the default: say it instead.
        empty = [name for name in self.fields if self.initial_data.get(name) == ""]
        if empty:
            raise serializers.ValidationError({name: ["Must not be empty."] for name in empty})
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
