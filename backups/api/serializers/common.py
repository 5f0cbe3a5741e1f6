"""What every request body of the API shares: unknown keys are refused, not ignored."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class StrictSerializer(serializers.Serializer):
    """A body with a key the endpoint does not know is a client bug to report (a typo would otherwise
    be silently ignored); the OpenAPI document says so with `additionalProperties: false`."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(self.initial_data) - set(self.fields) if isinstance(self.initial_data, dict) else set()
        if unknown:
            raise serializers.ValidationError({key: ["Unknown field."] for key in sorted(unknown)})
        return super().validate(attrs)
