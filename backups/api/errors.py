"""DRF's error shapes everywhere, refused authentications audited, service errors mapped to codes."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.db import transaction
from django.http import HttpResponseRedirect
from django.urls import reverse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from backups.api.serializers.runs import RunSerializer
from backups.audit import Actor, audit
from backups.catalogue.paths import CatalogueError
from backups.config.document import ConfigInvalid
from backups.errors import ServiceError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    request = context.get("request")
    if isinstance(exc, ServiceError):
        data: dict[str, Any] = {"detail": exc.message}
        if "run" in exc.extra:
            run = exc.extra["run"]
            data["run"] = RunSerializer(run).data if run is not None else None
        return Response(data, status=exc.status_code)
    if isinstance(exc, CatalogueError):
        # The root itself is unreadable (permissions, a broken mount): the service is degraded, and
        # /health says so; the answer names no path.
        return Response({"detail": "The backup root is not readable right now."}, status=503)
    if isinstance(exc, ConfigInvalid):
        return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, exceptions.NotAuthenticated) and request is not None and _is_browser_page(request):
        # A person who opened the docs or the browsable API without logging in: the login page, then back.
        return HttpResponseRedirect(
            f"{reverse('admin:login')}?{urlencode({'next': request.get_full_path()})}"
        )
    response = drf_exception_handler(exc, context)
    if request is not None and isinstance(
        exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed, exceptions.PermissionDenied)
    ):
        _audit_refusal(request, exc)
    if response is not None and isinstance(
        exc, exceptions.AuthenticationFailed | exceptions.NotAuthenticated
    ):
        response["WWW-Authenticate"] = 'Bearer realm="backup-service"'
        if isinstance(response.data, dict) and "messages" in response.data:
            response.data.pop("messages")
    return response


def _is_browser_page(request: Any) -> bool:
    """A browser asking for a page (HTML first in Accept, no credentials at all); API clients and
    scripts keep their JSON 401."""
    if request.method != "GET" or request.headers.get("Authorization"):
        return False
    accept = request.headers.get("Accept", "")
    return accept.startswith("text/html") or accept.startswith("application/xhtml")


def _audit_refusal(request: Any, exc: Exception) -> None:
    # `_user`: the user DRF settled on, if any (reading `request.user` would authenticate again).
    actor = Actor.from_request(request, user=getattr(request, "_user", None))
    try:
        with transaction.atomic():
            audit(
                "auth.refused" if not isinstance(exc, exceptions.PermissionDenied) else "auth.forbidden",
                actor=actor,
                target=request.path[:300],
                outcome="refused",
                details={"method": request.method, "reason": str(getattr(exc, "detail", exc))[:300]},
            )
    except Exception:  # the refusal is answered even if the audit store is down
        pass


def not_found(request: Any, exception: Exception | None = None) -> Any:
    """Unmatched URLs under the API answer like the API; pages keep Django's HTML."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith(("/api/", "/health", "/metrics")):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)


def server_error(request: Any) -> Any:
    from django.http import JsonResponse
    from django.views.defaults import server_error as html_server_error

    if request.path.startswith(("/api/", "/health", "/metrics")):
        return JsonResponse({"detail": "Internal server error; see the service log."}, status=500)
    return html_server_error(request)
