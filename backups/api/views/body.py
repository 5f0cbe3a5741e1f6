"""Request bodies of the verbs that take an object with a few known keys (or nothing)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.request import Request


def object_body(
    request: Request, allowed: Collection[str], *, required: Collection[str] = ()
) -> dict[str, Any]:
    """The body as a dict; an empty body is `{}`. Anything but a JSON object, or an unknown key, is a 400."""
    body = request.data if request.data is not None else {}
    if not isinstance(body, dict):
        raise ParseError("The body must be a JSON object.")
    errors: dict[str, list[str]] = {key: ["Unknown field."] for key in body if key not in allowed}
    errors.update({key: ["This field is required."] for key in required if key not in body})
    if errors:
        raise ValidationError(errors)
    return dict(body)
