"""What a job process prints and the worker reads: progress lines and one result line. Pure."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, TextIO

PROGRESS = "JOB-PROGRESS"
RESULT = "JOB-RESULT"
MAX_MESSAGE = 300


@dataclass(frozen=True)
class Progress:
    percent: int
    message: str


@dataclass(frozen=True)
class Result:
    document: dict[str, Any]


def progress_line(percent: int, message: str) -> str:
    percent = max(0, min(99, int(percent)))  # 100 belongs to a job that ended well
    text = " ".join(message.split())[:MAX_MESSAGE]
    return f"{PROGRESS} {percent} {text}"


def result_line(document: dict[str, Any]) -> str:
    return f"{RESULT} {json.dumps(document, separators=(',', ':'), default=str)}"


def parse(line: str) -> Progress | Result | None:
    """A line of a job's output: its progress, its result, or None (anything else it printed)."""
    if line.startswith(PROGRESS + " "):
        head, _, message = line[len(PROGRESS) + 1 :].partition(" ")
        try:
            return Progress(max(0, min(99, int(head))), message)
        except ValueError:
            return None
    if line.startswith(RESULT + " "):
        try:
            document = json.loads(line[len(RESULT) + 1 :])
        except ValueError:
            return None
        return Result(document) if isinstance(document, dict) else None
    return None


class Reporter:
    """The job's side: progress at most when it moved (a job may report per MiB read)."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.last: tuple[int, str] | None = None

    def progress(self, percent: int, message: str) -> None:
        key = (max(0, min(99, int(percent))), message)
        if key == self.last:
            return
        self.last = key
        print(progress_line(*key), file=self.out, flush=True)

    def result(self, document: dict[str, Any]) -> None:
        print(result_line(document), file=self.out, flush=True)
