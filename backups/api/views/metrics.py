"""`GET /metrics`: Prometheus scrapes. A plain Django view, not a DRF one: scrapers carry a static
`METRICS_TOKEN`, not a platform JWT. The text format or OpenMetrics, as the scraper's Accept asks."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client.exposition import choose_encoder

from backups.status.metrics import registry


def _authorized(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True  # open when no token is configured (loopback-only or embedded installs)
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may carry any latin-1 byte.
    return hmac.compare_digest(presented.strip().encode(), token.encode())


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        response = HttpResponse(
            "Authentication credentials were not provided or are invalid.\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = HttpResponse(encoder(registry()), content_type=content_type)
    # A scrape is a reading of the moment: no proxy or browser may serve an old one.
    response["Cache-Control"] = "no-store"
    return response
