"""Restoring files: a backup's tar archive extracted into a new folder `<target>/<backup id>-<time>/`,
safely, or a dry run saying what that would write.

Pure (no Django). The tar-slip family is refused member by member, and the refusals are reported:

* absolute paths and paths with a `..` component;
* symlinks, all of them. A link that points inside the folder is harmless where it lies, but whether it
  stays inside cannot be decided member by member (`a/e -> d/../../z` is inside until a later `a/d -> ..`
  makes it point out), and the folder is meant to be inspected and copied back by people and tools that
  follow links. The report names each one with its target so it can be recreated by hand.
* hard links, unless they name a regular file this same extraction already wrote (then they are just a
  second name for restored data; refusing them would lose that file's content, since a hard-link member
  carries no data of its own);
* device files, fifos, sparse and unknown member types;
* members larger than the per-member limit, or that would take the total past its limit.

Writes never follow a symlink and never replace anything: every directory is opened relative to its
parent with O_NOFOLLOW|O_DIRECTORY, every file created with O_CREAT|O_EXCL|O_NOFOLLOW relative to its
directory's descriptor, so a symlink planted in the destination (by the archive or anyone else) cannot
redirect a write. The extraction goes into `<name>.partial` and is renamed to `<name>` only when it is
complete; a failed or cancelled extraction removes it, and a process killed mid-way leaves a `.partial`
folder that remove_partial_folders() finds.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

from backups.verification.streams import (
    ByteStream,
    Cancelled,
    Compression,
    ProgressCallback,
    SourceReader,
    StopCheck,
    StreamError,
    decompressed,
)
from backups.verification.tar import TarError, TarMember, iter_tar

PARTIAL_SUFFIX = ".partial"
DEFAULT_MAX_MEMBER_BYTES = 64 << 30
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_REFUSALS_KEPT = 1000


class ExtractionError(Exception):
    """The destination cannot be used (not a directory, no free name); the message holds no secret."""


@dataclass(frozen=True)
class Limits:
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_total_bytes: int | None = None


@dataclass(frozen=True)
class Refusal:
    path: str
    reason: str

    def to_document(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class ExtractionReport:
    """What an extraction wrote (or, for a dry run, would write) and what it refused."""

    dry_run: bool
    folder: str | None = None  # the new folder's name inside the target (None for a dry run or a failure)
    files: int = 0
    dirs: int = 0
    hardlinks: int = 0
    bytes: int = 0
    skipped: int = 0  # members outside the requested path prefixes
    refused: list[Refusal] = field(default_factory=list)
    refused_count: int = 0
    ok: bool = True
    cancelled: bool = False
    error: str | None = None

    def to_document(self) -> dict[str, object]:
        return {
            "dryRun": self.dry_run,
            "folder": self.folder,
            "files": self.files,
            "dirs": self.dirs,
            "hardlinks": self.hardlinks,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "refused": [refusal.to_document() for refusal in self.refused],
            "refused_count": self.refused_count,
            "ok": self.ok,
            "cancelled": self.cancelled,
            "error": self.error,
        }

    def refuse(self, path: str, reason: str) -> None:
        self.refused_count += 1
        if len(self.refused) < _MAX_REFUSALS_KEPT:
            self.refused.append(Refusal(path, reason))


def normalize_prefixes(prefixes: Iterable[str] | None) -> list[tuple[str, ...]]:
    """Prefixes as path components; ValueError for one that could never match a safe member."""
    result = []
    for prefix in prefixes or ():
        parts, reason = _parts(prefix)
        if reason is not None or not parts:
            raise ValueError(f"invalid path prefix {prefix!r}")
        result.append(parts)
    return result


def _parts(path: str) -> tuple[tuple[str, ...], str | None]:
    if path.startswith("/"):
        return (), "absolute path"
    parts = tuple(part for part in path.split("/") if part not in ("", "."))
    if ".." in parts:
        return (), "'..' in path"
    if "\0" in path:
        return (), "NUL in path"
    return parts, None


@dataclass
class _Action:
    kind: str  # "file", "dir", "hardlink", "skip", "refuse", "root"
    parts: tuple[str, ...] = ()
    reason: str = ""
    link: tuple[str, ...] = ()


class _Planner:
    """The rules, shared by the dry run and the extraction, over a model of what has been written."""

    def __init__(self, prefixes: list[tuple[str, ...]], limits: Limits) -> None:
        self.prefixes = prefixes
        self.limits = limits
        self.entries: dict[tuple[str, ...], str] = {}  # parts -> "dir" | "file"
        self.total = 0

    def decide(self, member: TarMember) -> _Action:
        parts, reason = _parts(member.path)
        if reason is not None:
            return _Action("refuse", reason=reason)
        if not parts:
            return _Action("root")  # "./": the folder itself
        if self.prefixes and not any(parts[: len(prefix)] == prefix for prefix in self.prefixes):
            return _Action("skip")
        if member.type == "symlink":
            return _Action("refuse", reason=f"symlink (to {member.linkname!r}) not restored")
        if member.type in ("char", "block"):
            return _Action("refuse", reason="device file")
        if member.type == "fifo":
            return _Action("refuse", reason="fifo")
        if member.type not in ("file", "dir", "hardlink"):
            return _Action("refuse", reason=f"unsupported member type {member.typeflag!r}")
        for depth in range(1, len(parts)):
            if self.entries.get(parts[:depth]) == "file":
                return _Action("refuse", reason="a parent of it is a file")
        existing = self.entries.get(parts)
        if member.type == "dir":
            if existing == "file":
                return _Action("refuse", reason="already exists as a file")
            return _Action("dir", parts)
        if existing is not None:
            return _Action("refuse", reason="already exists (duplicate member)")
        if member.type == "hardlink":
            link, link_reason = _parts(member.linkname)
            if link_reason is not None or not link or self.entries.get(link) != "file":
                return _Action("refuse", reason=f"hard link to {member.linkname!r}, not a file restored here")
            return _Action("hardlink", parts, link=link)
        limits = self.limits
        if member.size > limits.max_member_bytes:
            return _Action("refuse", reason=f"larger than the limit of {limits.max_member_bytes} bytes")
        if limits.max_total_bytes is not None and self.total + member.size > limits.max_total_bytes:
            return _Action("refuse", reason=f"would exceed the total limit of {limits.max_total_bytes} bytes")
        return _Action("file", parts)

    def record(self, action: _Action, size: int) -> None:
        for depth in range(1, len(action.parts)):
            self.entries.setdefault(action.parts[:depth], "dir")
        self.entries[action.parts] = "dir" if action.kind == "dir" else "file"
        if action.kind == "file":
            self.total += size


def _tally(report: ExtractionReport, planner: _Planner, action: _Action, member: TarMember) -> None:
    if action.kind == "dir" and planner.entries.get(action.parts) != "dir":
        report.dirs += 1
    elif action.kind == "file":
        report.files += 1
        report.bytes += member.size
    elif action.kind == "hardlink":
        report.hardlinks += 1
    for depth in range(1, len(action.parts)):
        if action.parts[:depth] not in planner.entries:
            report.dirs += 1  # a parent the archive does not list: created implicitly


def _progress(
    size_bytes: int | None, on_progress: ProgressCallback | None, verb: str
) -> Callable[[int], None]:
    done = 0
    last = -1

    def advance(count: int) -> None:
        nonlocal done, last
        done += count
        percent = min(99, done * 100 // size_bytes) if size_bytes else 0
        if on_progress is not None and percent != last:
            last = percent
            on_progress(percent, verb)

    return advance


def plan_extraction(
    fileobj: BinaryIO,
    compression: Compression,
    *,
    prefixes: Iterable[str] | None = None,
    limits: Limits = Limits(),  # noqa: B008 - frozen dataclass
    size_bytes: int | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> ExtractionReport:
    """The dry run: the whole archive read (so a corrupt one is found), nothing written anywhere."""
    report = ExtractionReport(dry_run=True)
    planner = _Planner(normalize_prefixes(prefixes), limits)
    reader = SourceReader(
        fileobj, on_bytes=_progress(size_bytes, on_progress, "reading archive"), should_stop=should_stop
    )
    try:
        stream = ByteStream(decompressed(reader.chunks(), compression))
        for member, data in iter_tar(stream):
            action = planner.decide(member)
            if action.kind == "refuse":
                report.refuse(member.path, action.reason)
            elif action.kind == "skip":
                report.skipped += 1
            elif action.kind != "root":
                _tally(report, planner, action, member)
                planner.record(action, member.size)
            data.skip()
        stream.drain()
    except Cancelled:
        report.ok, report.cancelled, report.error = False, True, "cancelled"
    except (StreamError, TarError) as exc:
        report.ok, report.error = False, f"corrupt archive: {exc}"
    if on_progress is not None:
        on_progress(100, "dry run finished")
    return report


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


def folder_name(backup_id: str, when: datetime) -> str:
    if not _safe_name(backup_id) or len(backup_id) > 200:
        raise ValueError("invalid backup id")
    return f"{backup_id}-{when:%Y%m%d_%H%M%S}"


@contextlib.contextmanager
def _target_fd(target: int | str | os.PathLike[str]):
    # The target directory itself comes from the service's configuration and may be a symlink the
    # operator set up; below it, nothing is followed.
    if isinstance(target, int):
        yield target
        return
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise ExtractionError("the restore directory is not an accessible directory") from None
    try:
        yield fd
    finally:
        os.close(fd)


class _Writer:
    """Creates entries below `root_fd` (the .partial folder) by descriptor-relative, no-follow calls."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._cached: tuple[tuple[str, ...], int] | None = None
        self.dir_times: list[tuple[tuple[str, ...], float]] = []

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _dir(self, parts: tuple[str, ...]) -> int:
        """An fd of the directory `parts` (created when missing), owned by the cache."""
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        fd = os.dup(self.root_fd)
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self.close()
        self._cached = (parts, fd)
        return fd

    def mkdir(self, parts: tuple[str, ...], mode: int, mtime: float) -> None:
        parent = self._dir(parts[:-1])
        with contextlib.suppress(FileExistsError):
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
        fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        try:
            # Owner rwx always, so the rest of the extraction (and a cleanup) can still write in it.
            os.fchmod(fd, (mode & 0o777) | 0o700)
        finally:
            os.close(fd)
        self.dir_times.append((parts, mtime))

    def write_file(self, parts: tuple[str, ...], mode: int, mtime: float, chunks: Iterable[bytes]) -> int:
        parent = self._dir(parts[:-1])
        fd = os.open(parts[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        written = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    count = os.write(fd, view)
                    view = view[count:]
                    written += count
            # No setuid/setgid/sticky bits from an archive; owner read/write kept.
            os.fchmod(fd, (mode & 0o777) | 0o600)
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        return written

    def hardlink(self, parts: tuple[str, ...], link: tuple[str, ...]) -> None:
        source_dir = os.dup(self._dir(link[:-1]))
        try:
            target_dir = self._dir(parts[:-1])
            os.link(link[-1], parts[-1], src_dir_fd=source_dir, dst_dir_fd=target_dir, follow_symlinks=False)
        finally:
            os.close(source_dir)

    def apply_dir_times(self) -> None:
        for parts, mtime in sorted(self.dir_times, key=lambda item: -len(item[0])):
            with contextlib.suppress(OSError):
                parent = self._dir(parts[:-1])
                os.utime(parts[-1], (mtime, mtime), dir_fd=parent, follow_symlinks=False)


def extract_archive(
    fileobj: BinaryIO,
    compression: Compression,
    target: int | str | os.PathLike[str],
    name: str,
    *,
    prefixes: Iterable[str] | None = None,
    limits: Limits = Limits(),  # noqa: B008 - frozen dataclass
    size_bytes: int | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> ExtractionReport:
    """Extract into a new folder `name` (folder_name()) inside `target` (a directory fd or path).

    The folder is claimed exclusively: if `name` exists, `name-2`, `name-3`… are tried. The report's
    `folder` is the name used. Any failure or cancel removes everything this call made, and the report
    says why (ok False; cancelled True for a cancel). ExtractionError when the target is unusable."""
    prefix_parts = normalize_prefixes(prefixes)
    if not _safe_name(name):
        raise ExtractionError("invalid folder name")
    report = ExtractionReport(dry_run=False)
    with _target_fd(target) as target_fd:
        partial = _claim(target_fd, name + PARTIAL_SUFFIX)
        try:
            root_fd = os.open(partial, _DIR_FLAGS, dir_fd=target_fd)
        except OSError:
            _remove(target_fd, partial)
            raise ExtractionError("the new folder could not be opened") from None
        writer = _Writer(root_fd)
        try:
            _extract(
                fileobj,
                compression,
                writer,
                _Planner(prefix_parts, limits),
                report,
                _progress(size_bytes, on_progress, "extracting"),
                should_stop,
            )
            writer.apply_dir_times()
        except Cancelled:
            report.ok, report.cancelled, report.error = False, True, "cancelled"
        except (StreamError, TarError) as exc:
            report.ok, report.error = False, f"corrupt archive: {exc}"
        except OSError as exc:
            report.ok, report.error = False, f"write failed: {exc.strerror or type(exc).__name__}"
        except BaseException:
            writer.close()
            os.close(root_fd)
            _remove(target_fd, partial)
            raise
        writer.close()
        os.close(root_fd)
        if not report.ok:
            _remove(target_fd, partial)
        else:
            try:
                report.folder = _publish(target_fd, partial, name)
            except BaseException:
                _remove(target_fd, partial)
                raise
    if on_progress is not None:
        on_progress(100, "extraction finished" if report.ok else "extraction stopped")
    return report


def _extract(
    fileobj: BinaryIO,
    compression: Compression,
    writer: _Writer,
    planner: _Planner,
    report: ExtractionReport,
    advance: Callable[[int], None],
    should_stop: StopCheck | None,
) -> None:
    reader = SourceReader(fileobj, on_bytes=advance, should_stop=should_stop)
    stream = ByteStream(decompressed(reader.chunks(), compression))
    for member, data in iter_tar(stream):
        action = planner.decide(member)
        if action.kind == "refuse":
            report.refuse(member.path, action.reason)
            continue
        if action.kind in ("skip", "root"):
            report.skipped += action.kind == "skip"
            continue
        _tally(report, planner, action, member)
        planner.record(action, member.size)
        if action.kind == "dir":
            writer.mkdir(action.parts, member.mode, member.mtime)
        elif action.kind == "hardlink":
            writer.hardlink(action.parts, action.link)
        else:
            written = writer.write_file(action.parts, member.mode, member.mtime, data.chunks())
            if written != member.size:
                raise TarError(f"archive truncated inside member {member.path!r}")
    stream.drain()


def _claim(target_fd: int, partial: str) -> str:
    for attempt in range(1, 100):
        base = partial[: -len(PARTIAL_SUFFIX)]
        candidate = partial if attempt == 1 else f"{base}-{attempt}{PARTIAL_SUFFIX}"
        try:
            os.mkdir(candidate, 0o750, dir_fd=target_fd)
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise ExtractionError(f"cannot create the new folder ({exc.strerror})") from None
    raise ExtractionError("no free folder name")


def _publish(target_fd: int, partial: str, name: str) -> str:
    """Rename the finished .partial folder to its final name, never over an existing entry: the name is
    claimed by an exclusive mkdir first, and rename() replaces only that still-empty directory (anything
    put into it meanwhile makes the rename fail with ENOTEMPTY instead of being replaced)."""
    base = partial[: -len(PARTIAL_SUFFIX)]
    candidates = [base] + [f"{name}-{index}" for index in range(2, 100)]
    for candidate in candidates:
        try:
            os.mkdir(candidate, 0o700, dir_fd=target_fd)
        except FileExistsError:
            continue
        try:
            os.rename(partial, candidate, src_dir_fd=target_fd, dst_dir_fd=target_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rmdir(candidate, dir_fd=target_fd)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue
            raise
        return candidate
    raise ExtractionError("no free folder name")


def _remove(target_fd: int, name: str) -> None:
    # rmtree with dir_fd works through descriptors and does not follow symlinks found inside.
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(name, dir_fd=target_fd)


def remove_partial_folders(target: int | str | os.PathLike[str]) -> list[str]:
    """Remove `*.partial` folders an extraction killed mid-way left in a restore directory. Call it only
    when no extraction runs there (at worker start-up); returns the names removed."""
    removed = []
    with _target_fd(target) as target_fd:
        for entry in os.scandir(target_fd):
            if not entry.name.endswith(PARTIAL_SUFFIX):
                continue
            try:
                st = os.stat(entry.name, dir_fd=target_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                _remove(target_fd, entry.name)
                removed.append(entry.name)
    return removed
