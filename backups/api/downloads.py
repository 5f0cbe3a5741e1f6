"""Downloads: a whole backup as an uncompressed tar stream, or one file with Range/ETag support.

Both stream from an async generator whose blocking reads run in a thread, so the ASGI server's
back-pressure (uvicorn) paces the reads to the client instead of buffering the file (FileResponse under
ASGI is drained into a list first: a 1 GiB file cost 2 GB of memory before its first byte). Django has
no Range support: single ranges are answered here (206/416); with DOWNLOAD_ACCEL_PREFIX nginx sends the
bytes instead.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.cache import quote_etag
from rest_framework.request import Request

from backups.audit import Actor
from backups.catalogue.models import Backup
from backups.catalogue.paths import BackupNotFound, open_member, open_verified
from backups.catalogue.services import backup_record_download
from backups.catalogue.tarstream import iter_tar_chunks, plan_tar
from backups.errors import NotFound

CHUNK = 1 << 21


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
    backup_record_download(backup_id=backup.id, actor=Actor.from_request(request), details=details)


def download_tar(request: Request, backup: Backup) -> HttpResponse:
    root = Path(settings.BACKUP_ROOT)
    try:
        plan = plan_tar(root, backup.id)
    except BackupNotFound:
        raise NotFound("Backup not found.") from None
    _audit_download(request, backup, {"kind": "tar", "bytes": plan.content_length})
    response = StreamingHttpResponse(_stream(iter_tar_chunks(plan, CHUNK)), content_type="application/x-tar")
    response["Content-Length"] = str(plan.content_length)
    response["Content-Disposition"] = f'attachment; filename="{backup.id}.tar"'
    response["Cache-Control"] = "no-store"
    return response


def _read_range(path: Path, stat: os.stat_result, start: int, length: int) -> Iterator[bytes]:
    # open_verified: still the very file open_member approved (no symlink swapped in since).
    with open_verified(path, stat) as handle:
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


def download_file(request: Request, backup: Backup, rel_path: str) -> HttpResponse:
    root = Path(settings.BACKUP_ROOT)
    try:
        path, stat = open_member(root, backup.id, rel_path)
    except BackupNotFound:
        raise NotFound("File not found in this backup.") from None
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
