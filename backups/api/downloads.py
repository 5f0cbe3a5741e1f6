"""Downloads: a whole backup as an uncompressed tar stream, or one file with Range/ETag support.

Both stream from an async generator whose blocking reads run in a thread, so the ASGI server's
back-pressure (uvicorn) paces the reads to the client instead of buffering the file (FileResponse under
ASGI is drained into a list first: a 1 GiB file cost 2 GB of memory before its first byte). Django has
no Range support: single ranges are answered here (206/416); with DOWNLOAD_ACCEL_PREFIX nginx sends the
bytes instead.

What is sent is opened before the headers go out: the file itself for `?file=`, the backup folder for
the tar (its files are opened beneath it as the stream reaches them). Once the headers are out, the
promised Content-Length is kept or the transfer fails: when a file shrinks, is rewritten or (for the
tar) is replaced while it is sent, the generator raises `StreamAborted` and the connection is closed
before the body is complete, so the client sees a failed download, never a short or zero-padded file
that looks whole. A `?file=` download keeps reading the file it opened, so a file renamed over it
mid-transfer does not matter; the tar must match its plan, so any change to a planned file aborts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.cache import quote_etag
from rest_framework.request import Request

from backups.asgi_guard import StreamAborted
from backups.audit import Actor
from backups.catalogue.models import Backup
from backups.catalogue.paths import BackupNotFound, CatalogueError, Member, open_member
from backups.catalogue.services import backup_download_ended, backup_record_download
from backups.catalogue.tarstream import TarPlan, iter_tar_chunks, plan_tar
from backups.errors import NotFound

logger = logging.getLogger(__name__)

CHUNK = 1 << 21


class BlockingSource:
    """Chunks produced by blocking calls in worker threads, and released exactly once.

    The release never runs while a read is in progress in another thread: a client that disconnects
    cancels the async generator while its thread may still be inside `produce()`. Closing the file (or
    the tar generator) under that read is what raised `generator already executing` and left handles
    open. Here `close()` releases at once when no read is running, and otherwise leaves the release to
    the reading thread, which does it as soon as its read returns."""

    def __init__(self, produce: Callable[[], bytes | None], release: Callable[[], None]) -> None:
        self._produce = produce
        self._release = release
        self._lock = threading.Lock()
        self._close_requested = False
        self._closed = False

    def read(self) -> bytes | None:
        """The next chunk, None at the end or once closed. Called in a worker thread."""
        with self._lock:
            if self._closed or self._close_requested:
                self._release_locked()
                return None
            try:
                chunk = self._produce()
            except BaseException:
                self._release_locked()
                raise
            if chunk is None or self._close_requested:
                self._release_locked()
                return None
            return chunk

    def close(self) -> None:
        """Called on the event loop: never waits for a read in progress."""
        self._close_requested = True
        if self._lock.acquire(blocking=False):
            try:
                self._release_locked()
            finally:
                self._lock.release()

    def _release_locked(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._release()
            except Exception:
                logger.warning("could not release a download's file", exc_info=True)


#: The failures of a read that end a transfer already under way (anything else is a bug, and raises).
READ_FAILURES: tuple[type[Exception], ...] = (CatalogueError, OSError)


async def stream(
    source: BlockingSource,
    what: str,
    on_abort: Callable[[], None] | None = None,
    failures: tuple[type[Exception], ...] = READ_FAILURES,
    on_end: Callable[[int], None] | None = None,
) -> AsyncIterator[bytes]:
    """The source's chunks; `on_end(bytes handed to the server)` once the transfer ended in any way."""
    sent = 0
    try:
        while True:
            try:
                chunk = await asyncio.to_thread(source.read)
            except failures as error:
                # Headers (and a Content-Length) are out: the only honest signal left is a broken
                # transfer. The ASGI guard in front of Django lets the server drop the connection.
                logger.warning("download of %s aborted: %s", what, error)
                if on_abort is not None:
                    # Django skips the response's close() when its send fails: do it here, in the
                    # request's thread, so request_finished still closes its database connections.
                    await sync_to_async(on_abort)()
                raise StreamAborted(str(error)) from None
            if chunk is None:
                return
            # Counted as handed to the server: a client that hangs up may miss at most this chunk.
            sent += len(chunk)
            yield chunk
    finally:
        source.close()
        if on_end is not None:
            try:
                await sync_to_async(on_end)(sent)
            except BaseException:  # also when the transfer was cancelled: the audit row keeps its plan
                logger.warning("could not record the end of the download of %s", what, exc_info=True)


def streaming_response(
    source: BlockingSource,
    what: str,
    failures: tuple[type[Exception], ...] = READ_FAILURES,
    on_end: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> StreamingHttpResponse:
    closers: list[Callable[[], None]] = []
    response = StreamingHttpResponse(stream(source, what, lambda: closers[0](), failures, on_end), **kwargs)
    closers.append(response.close)
    # Also released when the response is closed without ever being streamed (an error after the view).
    response._resource_closers.append(source.close)
    return response


def audit_download(request: Request, backup: Backup, details: dict[str, Any]) -> Callable[[int], None]:
    """Audit a download before it starts; the answer is the `on_end` of its stream, which records the
    bytes actually sent."""
    event = backup_record_download(backup_id=backup.id, actor=Actor.from_request(request), details=details)
    planned = int(details["bytes"])
    return lambda sent: backup_download_ended(event, sent=sent, planned=planned)


def generator_source(chunks: Iterator[bytes], release: Callable[[], None] | None = None) -> BlockingSource:
    """A generator of chunks as a source; closing it runs the generator's `finally` (which closes
    what it opened), then `release`."""

    def release_all() -> None:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        if release is not None:
            release()

    return BlockingSource(lambda: next(chunks, None), release_all)


def tar_source(plan: TarPlan, chunk_size: int = CHUNK) -> BlockingSource:
    return generator_source(iter_tar_chunks(plan, chunk_size), plan.close)


def download_tar(request: Request, backup: Backup) -> HttpResponse:
    root = Path(settings.BACKUP_ROOT)
    try:
        plan = plan_tar(root, backup.id)
    except BackupNotFound:
        raise NotFound("Backup not found.") from None
    try:
        ended = audit_download(request, backup, {"kind": "tar", "bytes": plan.content_length})
    except BaseException:
        plan.close()
        raise
    response = streaming_response(tar_source(plan), backup.id, on_end=ended, content_type="application/x-tar")
    response["Content-Length"] = str(plan.content_length)
    response["Content-Disposition"] = f'attachment; filename="{backup.id}.tar"'
    response["Cache-Control"] = "no-store"
    return response


def range_source(member: Member, start: int, length: int, chunk_size: int = CHUNK) -> BlockingSource:
    """`length` bytes of the open file from `start`, or CatalogueError when the file shrank or was
    rewritten (its mtime moved) while being sent."""
    fd = member.file.fileno()
    opened = member.stat
    position, end = start, start + length

    def produce() -> bytes | None:
        nonlocal position
        if position >= end:
            return None
        want = min(chunk_size, end - position)
        data = os.pread(fd, want, position)
        now = os.fstat(fd)
        if len(data) < want or now.st_size < end or now.st_mtime_ns != opened.st_mtime_ns:
            raise CatalogueError("the file changed while it was being sent")
        position += len(data)
        return data

    return BlockingSource(produce, member.close)


RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# More digits than any file size: the number is "huge" rather than parsed (int() refuses past 4300
# digits, and nothing past 2**63 can be a position in a file anyway).
_MAX_DIGITS = 18


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 1 << 63


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
        suffix = _position(last)
        if suffix == 0:
            return "unsatisfiable"
        return (max(0, size - suffix), size - 1) if size else "unsatisfiable"
    start = _position(first)
    end = _position(last) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


def download_file(request: Request, backup: Backup, rel_path: str) -> HttpResponse:
    root = Path(settings.BACKUP_ROOT)
    try:
        member = open_member(root, backup.id, rel_path)
    except BackupNotFound:
        raise NotFound("File not found in this backup.") from None
    try:
        return _file_response(request, backup, rel_path, member)
    except BaseException:
        member.close()
        raise


def _file_response(request: Request, backup: Backup, rel_path: str, member: Member) -> HttpResponse:
    stat = member.stat
    size = stat.st_size
    etag = quote_etag(f"{stat.st_mtime_ns:x}-{size:x}")
    last_modified = formatdate(stat.st_mtime, usegmt=True)
    name = rel_path.rsplit("/", 1)[-1]
    headers = {
        "ETag": etag,
        "Last-Modified": last_modified,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
        "Cache-Control": "private, no-cache",
    }
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match and etag in [tag.strip() for tag in if_none_match.split(",")]:
        member.close()
        response = HttpResponse(status=304)
        for key, value in headers.items():
            response[key] = value
        return response

    start, end, code = 0, size - 1, 200
    range_header = request.headers.get("Range")
    if range_header and _if_range_matches(request.headers.get("If-Range"), etag, stat.st_mtime):
        parsed = _parse_range(range_header, size)
        if parsed == "unsatisfiable":
            member.close()
            response = JsonResponse({"detail": "Requested range not satisfiable."}, status=416)
            response["Content-Range"] = f"bytes */{size}"
            return response
        if isinstance(parsed, tuple):
            start, end = parsed
            code = 206
    length = max(0, end - start + 1)
    ranged = [start, end] if code == 206 else None
    details = {"kind": "file", "path": rel_path, "range": ranged, "bytes": length}
    if settings.DOWNLOAD_ACCEL_PREFIX:
        details["sent_by"] = "nginx"  # nginx sends the bytes: the service knows only what it authorised
    ended = audit_download(request, backup, details)
    if settings.DOWNLOAD_ACCEL_PREFIX:
        # nginx serves the bytes (sendfile, slow clients, ranges); the service only authorises.
        member.close()
        response = HttpResponse(content_type="application/octet-stream")
        response["X-Accel-Redirect"] = (
            f"{settings.DOWNLOAD_ACCEL_PREFIX.rstrip('/')}/{quote(backup.id)}/{quote(rel_path)}"
        )
    else:
        response = streaming_response(
            range_source(member, start, length),
            f"{backup.id}/{rel_path}",
            on_end=ended,
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
    except (TypeError, ValueError, OverflowError, IndexError):
        return False
