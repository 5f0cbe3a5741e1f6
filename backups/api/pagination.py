"""Page size and query parameters: out-of-range values are a 400, never silently clamped."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None or raw == "":
            return self.page_size
        if not re.fullmatch(r"\d{1,6}", raw) or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError({"page_size": [f"Must be an integer from 1 to {self.max_page_size}."]})
        return int(raw)

    def get_schema_operation_parameters(self, view: object) -> list[dict[str, object]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_page_size,
                    "default": 50,
                }
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
        return parameters


def choice_param(request: Request, name: str, choices: Sequence[str]) -> str | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    if value not in choices:
        raise ValidationError({name: [f"Must be one of: {', '.join(choices)}."]})
    return value
