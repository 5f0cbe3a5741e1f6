"""The REST API of CONTRACT §3. Views translate HTTP to services and selectors, nothing more."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import transaction
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.cache import quote_etag
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backups import catalogue, selectors, services
from backups.api.errors import client_ip
from backups.api.serializers import (
    BackupListSerializer,
    BackupSerializer,
    ConfigDocumentSerializer,
    ConflictSerializer,
    CreateRunSerializer,
    DownloadLinkSerializer,
    LogsQuerySerializer,
    LogsSerializer,
    RunEnvelopeSerializer,
    RunSerializer,
    StatusSerializer,
    TestScriptSerializer,
)
from backups.auth import PlatformJWTAuthentication, SuperuserSessionAuthentication, actor_of
from backups.download_links import SignedLinkAuthentication, signed_download_url
from backups.models import Backup, BackupStatus, Run

CHUNK = 1 << 21
# PATCH takes any subset of the document, nested keys included.
PatchedConfigDocument = ConfigDocumentSerializer(partial=True)


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


def _choice_param(request: Request, name: str, choices: list[str]) -> str | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    if value not in choices:
        raise ValidationError({name: [f"Must be one of: {', '.join(choices)}."]})
    return value


def _actor(request: Request) -> str:
    return actor_of(request.user)


# --- backups --------------------------------------------------------------------------------------


class BackupViewSet(viewsets.GenericViewSet):
    """The catalogue: folders directly inside BACKUP_ROOT. `latest` is an alias of the newest
    completed backup wherever a GET takes an id."""

    serializer_class = BackupSerializer
    pagination_class = Pagination
    lookup_value_regex = "[^/]+"
    queryset = Backup.objects.all()
    ORDERINGS = ["created_at", "-created_at", "size_bytes", "-size_bytes"]

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=BackupStatus.values),
            OpenApiParameter("ordering", str, enum=ORDERINGS),
            OpenApiParameter("page_size", int, description="1-500, default 50"),
        ],
        responses=BackupListSerializer(many=True),
    )
    def list(self, request: Request) -> Response:
        selectors.ensure_catalogue_fresh()
        queryset = Backup.objects.defer("files", "signature")
        backup_status = _choice_param(request, "status", BackupStatus.values)
        if backup_status:
            queryset = queryset.filter(status=backup_status)
        ordering = _choice_param(request, "ordering", self.ORDERINGS) or "-created_at"
        queryset = queryset.order_by(ordering, "-id" if ordering.startswith("-") else "id")
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(BackupListSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(BackupSerializer(selectors.get_backup(pk)).data)

    @extend_schema(
        responses={
            204: None,
            404: OpenApiResponse(description="unknown"),
            409: OpenApiResponse(description="running or pinned"),
        }
    )
    def destroy(self, request: Request, pk: str) -> Response:
        if pk == catalogue.LATEST_LINK:
            raise services.NotFound("Backup not found: delete a backup by its real id, not `latest`.")
        selectors.ensure_catalogue_fresh()
        services.backup_delete(backup_id=pk, actor=_actor(request), ip=client_ip(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        parameters=[OpenApiParameter("file", str, description="relative path of one file in the backup")],
        responses={
            (200, "application/x-tar"): OpenApiTypes.BINARY,
            (206, "application/octet-stream"): OpenApiTypes.BINARY,
            404: OpenApiResponse(description="unknown backup or file"),
            416: OpenApiResponse(description="range not satisfiable"),
        },
    )
    @action(
        detail=True,
        methods=["get"],
        authentication_classes=[
            PlatformJWTAuthentication,
            SuperuserSessionAuthentication,
            SignedLinkAuthentication,
        ],
    )
    def download(self, request: Request, pk: str) -> HttpResponse:
        backup = selectors.get_backup(pk)
        rel_path = request.query_params.get("file")
        if rel_path is not None:
            return _download_file(request, backup, rel_path)
        return _download_tar(request, backup)

    @extend_schema(request=None, responses=DownloadLinkSerializer)
    @action(detail=True, methods=["post"], url_path="download-link")
    def download_link(self, request: Request, pk: str) -> Response:
        """A link that downloads this backup (or `?file=`) without a header, for a browser; it expires
        after DOWNLOAD_LINK_TTL seconds and opens nothing else."""
        backup = selectors.get_backup(pk)
        url = signed_download_url(backup.id, request.user, request.query_params.get("file") or None)
        return Response({"url": url, "expires_in": settings.DOWNLOAD_LINK_TTL})

    @extend_schema(request=None, responses=BackupSerializer)
    @action(detail=True, methods=["post"])
    def pin(self, request: Request, pk: str) -> Response:
        """Protect a backup from delete and retention."""
        return self._set_pinned(request, pk, pinned=True)

    @extend_schema(request=None, responses=BackupSerializer)
    @action(detail=True, methods=["post"])
    def unpin(self, request: Request, pk: str) -> Response:
        return self._set_pinned(request, pk, pinned=False)

    def _set_pinned(self, request: Request, pk: str, *, pinned: bool) -> Response:
        backup = services.backup_set_pinned(
            backup_id=selectors.get_backup(pk).id, pinned=pinned, actor=_actor(request), ip=client_ip(request)
        )
        return Response(BackupSerializer(backup).data)


async def _stream(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """An async generator over a blocking one: each read happens in a thread, and the ASGI server's
    back-pressure (uvicorn) paces the reads to the client's speed instead of buffering the file."""
    sentinel = b""
    try:
        while True:
            chunk = await asyncio.to_thread(next, chunks, sentinel)
            if chunk is sentinel or not chunk:
                return
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _audit_download(request: Request, backup: Backup, details: dict[str, Any]) -> None:
    with transaction.atomic():
        services.audit(
            "backup.download", actor=_actor(request), target=backup.id, ip=client_ip(request), details=details
        )


def _download_tar(request: Request, backup: Backup) -> HttpResponse:
    root = Path(settings.BACKUP_ROOT)
    try:
        plan = catalogue.plan_tar(root, backup.id)
    except catalogue.BackupNotFound:
        raise services.NotFound("Backup not found.") from None
    _audit_download(request, backup, {"kind": "tar", "bytes": plan.content_length})
    response = StreamingHttpResponse(
        _stream(catalogue.iter_tar_chunks(plan, CHUNK)), content_type="application/x-tar"
    )
    response["Content-Length"] = str(plan.content_length)
    response["Content-Disposition"] = f'attachment; filename="{backup.id}.tar"'
    response["Cache-Control"] = "no-store"
    return response


def _read_range(path: Path, stat: os.stat_result, start: int, length: int) -> Iterator[bytes]:
    # open_verified: still the very file open_member approved (no symlink swapped in since).
    with catalogue.open_verified(path, stat) as handle:
        handle.seek(start)
        remaining = length
        while remaining > 0:
            data = handle.read(min(CHUNK, remaining))
            if not data:
                # The file shrank since its size was announced: keep the promised length.
                data = b"\0" * min(CHUNK, remaining)
            remaining -= len(data)
            yield data


RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """(start, end inclusive) for one satisfiable range; None to ignore the header (multi-range or not
    bytes); "unsatisfiable" for a 416."""
    match = RANGE.match(header.strip().replace(" ", ""))
    if not match:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0:
            return "unsatisfiable"
        return (max(0, size - suffix), size - 1) if size else "unsatisfiable"
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _download_file(request: Request, backup: Backup, rel_path: str) -> HttpResponse:
    root = Path(settings.BACKUP_ROOT)
    try:
        path, stat = catalogue.open_member(root, backup.id, rel_path)
    except catalogue.BackupNotFound:
        raise services.NotFound("File not found in this backup.") from None
    size = stat.st_size
    etag = quote_etag(f"{stat.st_mtime_ns:x}-{size:x}")
    last_modified = formatdate(stat.st_mtime, usegmt=True)
    name = Path(rel_path).name
    headers = {
        "ETag": etag,
        "Last-Modified": last_modified,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
        "Cache-Control": "private, no-cache",
    }
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match and etag in [tag.strip() for tag in if_none_match.split(",")]:
        response = HttpResponse(status=304)
        for key, value in headers.items():
            response[key] = value
        return response

    start, end, code = 0, size - 1, 200
    range_header = request.headers.get("Range")
    if range_header and _if_range_matches(request.headers.get("If-Range"), etag, stat.st_mtime):
        parsed = _parse_range(range_header, size)
        if parsed == "unsatisfiable":
            response = JsonResponse({"detail": "Requested range not satisfiable."}, status=416)
            response["Content-Range"] = f"bytes */{size}"
            return response
        if isinstance(parsed, tuple):
            start, end = parsed
            code = 206
    length = max(0, end - start + 1)
    _audit_download(
        request,
        backup,
        {"kind": "file", "path": rel_path, "range": [start, end] if code == 206 else None, "bytes": length},
    )
    if settings.DOWNLOAD_ACCEL_PREFIX:
        # nginx serves the bytes (sendfile, slow clients, ranges); the service only authorises.
        response = HttpResponse(content_type="application/octet-stream")
        response["X-Accel-Redirect"] = (
            f"{settings.DOWNLOAD_ACCEL_PREFIX.rstrip('/')}/{quote(backup.id)}/{quote(rel_path)}"
        )
    else:
        response = StreamingHttpResponse(
            _stream(_read_range(path, stat, start, length)),
            status=code,
            content_type="application/octet-stream",
        )
        response["Content-Length"] = str(length)
        if code == 206:
            response["Content-Range"] = f"bytes {start}-{end}/{size}"
    for key, value in headers.items():
        response[key] = value
    return response


def _if_range_matches(if_range: str | None, etag: str, mtime: float) -> bool:
    if not if_range:
        return True
    if if_range.startswith('"') or if_range.startswith("W/"):
        return if_range == etag
    try:
        return int(parsedate_to_datetime(if_range).timestamp()) >= int(mtime)
    except (TypeError, ValueError):
        return False


# --- runs -----------------------------------------------------------------------------------------


class RunViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = RunSerializer
    pagination_class = Pagination
    queryset = Run.objects.defer("output").order_by("-created_at")
    lookup_value_regex = "[^/]+"

    def get_object(self) -> Run:
        try:
            return Run.objects.defer("output").get(id=uuid.UUID(self.kwargs["pk"]))
        except (ValueError, Run.DoesNotExist):
            raise services.NotFound("Run not found.") from None

    @extend_schema(request=None, responses={202: RunSerializer, 409: ConflictSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        run = services.run_request_cancel(run=self.get_object(), actor=_actor(request), ip=client_ip(request))
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class CreateBackupView(APIView):
    @extend_schema(
        request=CreateRunSerializer, responses={202: RunEnvelopeSerializer, 409: ConflictSerializer}
    )
    def post(self, request: Request) -> Response:
        body = request.data if request.data is not None else {}
        if not isinstance(body, dict):
            raise ParseError("The body must be a JSON object.")
        serializer = CreateRunSerializer(data=body)
        serializer.is_valid(raise_exception=True)
        run = services.run_enqueue(
            actor=_actor(request), description=serializer.validated_data["description"], ip=client_ip(request)
        )
        return Response({"run": RunSerializer(run).data}, status=status.HTTP_202_ACCEPTED)


# --- status, logs, config, script -----------------------------------------------------------------


class StatusView(APIView):
    @extend_schema(responses=StatusSerializer)
    def get(self, request: Request) -> Response:
        return Response(selectors.status_document())


class LogsView(APIView):
    @extend_schema(parameters=[LogsQuerySerializer], responses=LogsSerializer)
    def get(self, request: Request) -> Response:
        query = LogsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        source, lines = query.validated_data["source"], query.validated_data["lines"]
        run = None
        if source == "run":
            run = Run.objects.filter(id=query.validated_data["run"]).first()
            if run is None:
                raise services.NotFound("Run not found.")
        return Response({"source": source, "entries": selectors.log_entries(source, lines, run)})


class ConfigView(APIView):
    @extend_schema(responses=ConfigDocumentSerializer)
    def get(self, request: Request) -> Response:
        return Response(services.config_current())

    @extend_schema(request=ConfigDocumentSerializer, responses=ConfigDocumentSerializer)
    def put(self, request: Request) -> Response:
        return Response(
            services.config_update(
                document=request.data, actor=_actor(request), partial=False, ip=client_ip(request)
            )
        )

    @extend_schema(request=PatchedConfigDocument, responses=ConfigDocumentSerializer)
    def patch(self, request: Request) -> Response:
        return Response(
            services.config_update(
                document=request.data, actor=_actor(request), partial=True, ip=client_ip(request)
            )
        )


class TestScriptView(APIView):
    """Checks the script and the places it writes, without starting a backup."""

    @extend_schema(request=None, responses=TestScriptSerializer)
    def post(self, request: Request) -> Response:
        checks = script_checks()
        with transaction.atomic():
            services.audit(
                "script.test",
                actor=_actor(request),
                ip=client_ip(request),
                outcome="ok" if all(c["ok"] for c in checks) else "failed",
                details={"failed": [c["name"] for c in checks if not c["ok"]]},
            )
        return Response({"ok": all(check["ok"] for check in checks), "checks": checks})


def script_checks() -> list[dict[str, Any]]:
    script = Path(settings.BACKUP_SCRIPT)
    root = Path(settings.BACKUP_ROOT)
    log = Path(settings.BACKUP_SCRIPT_LOG)
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail})

    exists = script.is_file()
    add("exists", exists, "the script is a file" if exists else "the script is missing")
    executable = exists and os.access(script, os.X_OK)
    add(
        "executable", executable, "the script is executable" if executable else "the script is not executable"
    )
    if exists:
        try:
            result = subprocess.run(
                ["bash", "-n", str(script)],
                capture_output=True,
                text=True,
                timeout=15,
                stdin=subprocess.DEVNULL,
            )
            syntax_ok = result.returncode == 0
            detail = (
                "bash -n: no syntax errors"
                if syntax_ok
                else ("bash -n: " + result.stderr.strip().replace(str(script), script.name)[:300])
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            syntax_ok, detail = False, f"bash -n could not run: {type(error).__name__}"
        add("syntax", syntax_ok, detail)
    else:
        add("syntax", False, "nothing to check")
    writable = _writable_dir(root)
    add(
        "backup_root_writable",
        writable,
        "the backup root is writable" if writable else "the backup root is missing or not writable",
    )
    if writable:
        total, free = catalogue.disk_usage(root)
        enough = free >= settings.MIN_FREE_BYTES
        add(
            "free_disk",
            enough,
            f"{free} of {total} bytes free"
            + ("" if enough else f"; at least {settings.MIN_FREE_BYTES} bytes wanted"),
        )
    else:
        add("free_disk", False, "unknown: the backup root is not usable")
    log_ok = _writable_file(log)
    add("log_writable", log_ok, "the script log is writable" if log_ok else "the script log is not writable")
    return checks


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _writable_file(path: Path) -> bool:
    if path.exists():
        return path.is_file() and os.access(path, os.W_OK)
    return _writable_dir(path.parent)


# --- health (no auth) -----------------------------------------------------------------------------


def health(request: Any) -> JsonResponse:
    document, code = selectors.health_document()
    return JsonResponse(document, status=code)
