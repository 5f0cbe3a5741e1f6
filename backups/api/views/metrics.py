"""`GET /metrics`: Prometheus scrapes. A plain Django view, not a DRF one: scrapers carry a static
`METRICS_TOKEN`, not a platform JWT. The text format or OpenMetrics, as the scraper's Accept asks.

Without a `METRICS_TOKEN`, only clients on this machine get an answer (the address the server saw,
which behind nginx is the real client's only with BEHIND_PROXY=1). Scrapes are not rate-limited: a
scraper asks every few seconds for ever, and gaps in its series would be read as outages; a refusal
costs one constant-time comparison, and a 256-bit token is not guessed by asking faster."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe
from prometheus_client.exposition import choose_encoder

from backups.status.metrics import registry


def _from_this_machine(request: HttpRequest) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _authorized(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return _from_this_machine(request)
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may carry any latin-1 byte.
    return hmac.compare_digest(presented.strip().encode(), token.encode())


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        if not settings.METRICS_TOKEN:
            return JsonResponse(
                {"detail": "Metrics are served to this machine only (no METRICS_TOKEN is configured)."},
                status=403,
            )
        response = JsonResponse(
            {"detail": "Authentication credentials were not provided or are invalid."}, status=401
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = HttpResponse(encoder(registry()), content_type=content_type)
    # A scrape is a reading of the moment: no proxy or browser may serve an old one.
    response["Cache-Control"] = "no-store"
    return response
