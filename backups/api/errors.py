"""DRF's error shapes everywhere, refused authentications audited, service errors mapped to codes."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.db import transaction
from django.http import HttpResponseRedirect
from django.urls import reverse
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
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
    if request is not None and request.headers.get("Authorization"):
        # A client that sent credentials is a program, whatever its Accept says: its error is JSON,
        # never the browsable API's page.
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type
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


JSON_PREFIXES = ("/api/", "/health", "/metrics")


def _wants_json(request: Any) -> bool:
    return getattr(request, "path", "").startswith(JSON_PREFIXES)


def _json(detail: str, status: int) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"detail": detail}, status=status)


def not_found(request: Any, exception: Exception | None = None) -> Any:
    """Unmatched URLs under the API answer like the API; pages keep Django's HTML."""
    from django.views.defaults import page_not_found

    if _wants_json(request):
        return _json("Not found.", 404)
    return page_not_found(request, exception)


def bad_request(request: Any, exception: Exception | None = None) -> Any:
    """What Django refuses before a view runs: a Host header not in ALLOWED_HOSTS (DisallowedHost), a
    body over DATA_UPLOAD_MAX_MEMORY_SIZE, too many fields... Under the API, in the API's shape."""
    from django.core.exceptions import DisallowedHost, RequestDataTooBig
    from django.views.defaults import bad_request as html_bad_request

    if not _wants_json(request):
        return html_bad_request(request, exception)
    if isinstance(exception, DisallowedHost):
        return _json("Bad request: the Host header is not one this service answers to.", 400)
    if isinstance(exception, RequestDataTooBig):
        return _json("Request body too large.", 413)
    return _json("Bad request.", 400)


def permission_denied(request: Any, exception: Exception | None = None) -> Any:
    from django.views.defaults import permission_denied as html_permission_denied

    if _wants_json(request):
        return _json("You do not have permission to perform this action.", 403)
    return html_permission_denied(request, exception)


def csrf_failure(request: Any, reason: str = "") -> Any:
    """CSRF_FAILURE_VIEW: a session request without a valid CSRF token."""
    from django.views.csrf import csrf_failure as html_csrf_failure

    if _wants_json(request):
        return _json(f"CSRF Failed: {reason or 'CSRF token missing or incorrect.'}", 403)
    return html_csrf_failure(request, reason)


def server_error(request: Any) -> Any:
    from django.views.defaults import server_error as html_server_error

    if _wants_json(request):
        return _json("Internal server error; see the service log.", 500)
    return html_server_error(request)
