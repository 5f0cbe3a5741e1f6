"""`{% health_notices as notices %}`: the health banner for pages that are not the dashboard."""

from __future__ import annotations

from typing import Any

from django import template

from backups.status import banner

register = template.Library()


@register.simple_tag
def health_notices() -> list[dict[str, Any]]:
    return banner.notices()
