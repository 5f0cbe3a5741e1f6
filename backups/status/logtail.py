"""Reading the end of a log file without reading the whole file. Pure: no Django."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

BLOCK = 64 * 1024
MAX_LINE = 8 * 1024  # one entry's message is cut here: a log line is no place for megabytes

SCRIPT_LINE = re.compile(
    r"^\[?(?P<ts>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\]?\s+"
    r"(?:\[?(?P<level>DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|CRITICAL|FATAL|SUCCESS|OK)\]?:?\s+)?(?P<msg>.*)$",
    re.IGNORECASE,
)
LEVELS = {
    "warn": "warning",
    "fatal": "error",
    "critical": "error",
    "notice": "info",
    "success": "info",
    "ok": "info",
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
}


# What str.splitlines() also ends a line at. A log line is ended by \n only (\r\n tolerated): a
# description or a file name holding U+2028, U+2029 or U+0085 must not start a forged entry such as
# "[2020-01-01 00:00:00] ERROR ...". Inside a message they are shown escaped, so no viewer breaks there.
_OTHER_LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ESCAPES = str.maketrans({ch: ch.encode("unicode_escape").decode("ascii") for ch in _OTHER_LINE_BREAKS})


def split_lines(text: str) -> list[str]:
    """Lines of a text ended by \n (or \r\n) only; no empty last line for a final \n."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [visible(line.removesuffix("\r")) for line in lines]


def visible(line: str) -> str:
    return line.translate(_ESCAPES)


def tail_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a text file, reading backwards in blocks; [] when it is missing."""
    if count <= 0:
        return []
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, whatever happens
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return []
    with handle:
        end = os.fstat(handle.fileno()).st_size
        position, chunks, newlines = end, [], 0
        while position > 0 and newlines <= count:
            step = min(BLOCK, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            newlines += chunk.count(b"\n")
            chunks.append(chunk)
        data = b"".join(reversed(chunks))
    lines = split_lines(data.decode("utf-8", errors="replace"))
    if position > 0 and lines:
        lines = lines[1:]  # the first one is probably cut
    return [line[:MAX_LINE] for line in lines[-count:]]


def parse_script_line(line: str) -> dict[str, Any]:
    match = SCRIPT_LINE.match(line)
    if not match:
        return {"timestamp": None, "level": _guess_level(line), "message": line}
    level = LEVELS.get((match.group("level") or "").lower()) or _guess_level(match.group("msg"))
    return {"timestamp": match.group("ts").replace(" ", "T"), "level": level, "message": match.group("msg")}


def _guess_level(text: str) -> str:
    lowered = text.lower()
    if "error" in lowered or "failed" in lowered or "❌" in text:
        return "error"
    if "warn" in lowered:
        return "warning"
    return "info"


def parse_json_line(line: str) -> dict[str, Any]:
    """A JSON-lines service log entry; a line that is not JSON is still shown, as text."""
    try:
        data = json.loads(line)
    except ValueError:
        return {"timestamp": None, "level": _guess_level(line), "message": line}
    if not isinstance(data, dict):
        return {"timestamp": None, "level": "info", "message": line}
    entry = dict(data)
    entry["timestamp"] = data.get("timestamp")
    entry["level"] = LEVELS.get(str(data.get("level", "info")).lower(), "info")
    entry["message"] = str(data.get("message", ""))
    return entry
