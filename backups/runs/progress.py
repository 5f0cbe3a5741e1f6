"""Progress of a backup run, read from the backup script's output and from the artifacts it writes.

Pure on purpose: no Django, no processes, no filesystem. The worker hands it the script's output lines (as
the runner streams them) and the names it lists in the run's folder; this module only turns them into a
``Progress``, so it can be tested with plain strings and reused for scripts of any style.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_ARTIFACTS",
    "Marker",
    "Progress",
    "ProgressTracker",
    "clean_line",
    "eta_seconds",
    "find_backup_folder",
    "is_error_line",
    "parse_marker",
]

# What production-backup.sh leaves in backup-YYYYmmdd_HHMMSS/, in the order it writes them, so "the newest
# artifact" can be told apart when several appear between two listings.
DEFAULT_ARTIFACTS: tuple[str, ...] = (
    "beauty_platform_new.sql",
    "beauty_audit.sql",
    "beauty-platform.tar.gz",
    "images-uploads.tar.gz",
    "nginx-configs.tar.gz",
    "configs",
    "system-info",
)

MAX_MESSAGE_CHARS = 500
MAX_STAGE_CHARS = 80
# 100 is reserved for a run that really succeeded; 95 leaves room for the final steps a guess cannot see.
MAX_RUNNING_PERCENT = 99
MAX_ESTIMATED_PERCENT = 95

# --------------------------------------------------------------------------------------------- cleaning

# One pass over every escape family a terminal-minded script emits. CSI covers colours and cursor moves;
# OSC (titles, hyperlinks) may be cut off at the end of a line, so an unterminated one runs to the end.
# Every repetition is over a class that excludes the introducer, which keeps the scan linear.
_ANSI_RE = re.compile(
    r"""
      \x1b\][^\x07\x1b]*(?:\x07|\x1b\\|$)      # OSC ... BEL / ST
    | \x1b[PX^_][^\x1b]*(?:\x1b\\|$)           # DCS, SOS, PM, APC ... ST
    | (?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]         # CSI (7- and 8-bit)
    | \x1b[ -/]*[0-~]                          # any other two-or-more byte escape
    | \x1b                                     # a lone ESC left by a truncated sequence
    """,
    re.VERBOSE,
)

# Emoji and pictographs: status decorations only, never information, and they vary between terminals.
# General text symbols (arrows, box drawing, ©) are left alone; the ones removed are emoji-capable or
# used as spinners/bullets in script output.
_SYMBOL_RE = re.compile(
    "["
    "\u00ad"  # soft hyphen
    "\u200b-\u200d\u2060\ufeff"  # zero-width space/joiners, word joiner, BOM
    "\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa"
    "\u20d0-\u20ff"  # combining marks for symbols (keycap U+20E3)
    "\u2300-\u23ff"  # misc technical: watches, hourglasses, media buttons
    "\u24c2\u25a0-\u25ff"  # geometric shapes: bullets, triangles
    "\u2600-\u27bf"  # misc symbols and dingbats: check marks, crosses, warning signs
    "\u2800-\u28ff"  # braille patterns, the usual spinner frames
    "\u2934\u2935\u2b00-\u2bff\u3030\u303d\u3297\u3299"
    "\ufe00-\ufe0f"  # variation selectors
    "\U0001f000-\U0001fbff"  # all emoji planes incl. skin tones, flags, legacy computing
    "\U000e0000-\U000e007f"  # tag characters (subdivision flags)
    "\U000e0100-\U000e01ef"  # variation selectors supplement
    "]"
)

# C0/C1 controls other than whitespace (which str.split() already folds); backspaces, bells and the like.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def _clean_segment(text: str) -> str:
    if "\x1b" in text or "\x9b" in text:
        text = _ANSI_RE.sub("", text)
    if not text.isascii():
        text = _SYMBOL_RE.sub("", text)
    text = " ".join(text.split())
    if not text.isprintable():
        text = " ".join(_CONTROL_RE.sub("", text).split())
    return text


def clean_line(raw: str) -> str:
    """Strip ANSI escape sequences (CSI incl. colours, cursor moves, OSC), carriage-return overwrites (keep
    the text after the last \\r; a trailing \\r, or one followed only by escapes, keeps the text before it),
    emoji and other symbol pictographs / variation selectors / ZWJ; collapse runs of whitespace; strip ends.
    A trailing newline is dropped."""
    if raw[-1:] == "\n":
        # Lines straight from readline() keep their newline; drop it so they can take the fast path.
        raw = raw.rstrip("\r\n")
    # Most lines are plain printable ASCII: nothing to strip but spaces, and this is the hot path.
    if raw.isascii() and raw.isprintable():
        line = raw.strip()
        return " ".join(line.split()) if "  " in line else line
    if "\r" not in raw:
        return _clean_segment(raw)
    # A terminal shows only what was written after the last carriage return. Segments that clean to nothing
    # ("\r\x1b[K" clearing the line, a stray trailing "\r") did not replace the visible text.
    for segment in reversed(raw.split("\r")):
        cleaned = _clean_segment(segment)
        if cleaned:
            return cleaned
    return ""


# ---------------------------------------------------------------------------------------------- markers


@dataclass(frozen=True)
class Marker:
    percent: float | None  # 0..100 when the line states it
    stage: str | None  # short stage text, e.g. "Dumping databases" from "[3/7] Dumping databases..."
    step: tuple[int, int] | None  # (3, 7) for step styles


_TIME = r"\d{2}:\d{2}(?::\d{2})?(?:[.,]\d{1,9})?"
_ZONE = r"(?:\s?(?:Z|UTC|[+-]\d{2}:?\d{2}))?"
_DATE_TIME = rf"\d{{4}}-\d{{2}}-\d{{2}}[ T]{_TIME}{_ZONE}"
# What may precede a "[n/N]" at the start of a line: a timestamp, a log level, a little decoration.
# Every quantifier is bounded and the parts are anchored, so a hostile line costs O(1) here.
_PREFIX = rf"""
    (?:
        \[{_DATE_TIME}\]
      | {_DATE_TIME}
      | \[{_TIME}\]
      | {_TIME}
      | [A-Z][a-z]{{2}}\s{{1,2}}\d{{1,2}}\s{_TIME}         # syslog: "Jan  1 03:00:00"
    )?
    \s{{0,3}}[:|-]?\s{{0,3}}
    (?:\[?(?i:trace|debug|info|notice|warn|warning|error|ok|log)\]?:?\s{{0,3}}(?:-\s{{0,3}})?)?
    (?:[=#>*•·~+|:-]{{1,8}}\s{{0,3}})?
"""
_PREFIX_RE = re.compile(_PREFIX, re.VERBOSE)

# "[3/7] ..." / "(3/7) ...": only at the start, so dates and paths further in ("/var/lib/3/7") never count.
_BRACKET_STEP_RE = re.compile(
    _PREFIX
    + r"""
    (?:
        \[\s{0,2}(\d{1,4})\s{0,2}/\s{0,2}(\d{1,4})\s{0,2}\]
      | \(\s{0,2}(\d{1,4})\s{0,2}/\s{0,2}(\d{1,4})\s{0,2}\)
    )
    """,
    re.VERBOSE,
)

# "Step 3/7", "STEP 3 of 7", "step #3 / 7": the word makes it unambiguous, so it may appear anywhere.
_STEP_WORD_RE = re.compile(
    r"(?<![\w-])step\s{0,3}#?\s{0,2}(\d{1,4})\s{0,3}(?:/|of(?=[\s\d]))\s{0,3}(\d{1,4})(?![\d/]|\.\d)",
    re.IGNORECASE,
)

# "PROGRESS: 42", "progress=42.5", "Progress 42%". A bare number after the word must not run into a word or
# a slash ("progress: 3 files", "progress 3/7"), which would be a count rather than a percentage.
_KEYWORD_RE = re.compile(
    r"(?<![\w-])progress\s{0,3}[:=]?\s{0,3}(\d{1,3}(?:\.\d{1,6})?)(?:\s?%|(?!\.?\d|\s?[/\w]))",
    re.IGNORECASE,
)

# A bare "42%". The look-behind rejects digits glued to letters or other numbers ("v1%", "1234%").
_BARE_PERCENT_RE = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,6})?) ?%")

# Percentages that describe something other than the run: gzip/zip ratios, df, top, ping.
_NOT_PROGRESS_RE = re.compile(
    r"\b(?:deflated|inflated|stored|compressed|compression|ratio|reduced|reduction|saved|savings|cpu|mem"
    r"|memory|used|usage|free|full|load|swap|loss|utili[sz]ation)\b|-- replaced",
    re.IGNORECASE,
)
# A df(1) row: device, three sizes, "Use%", mount point.
_DF_ROW_RE = re.compile(r"\S+(?:\s+\d[\d.,]*[KMGTPE]?i?B?){3}\s+\d{1,3}%\s+/")

# Left over once the percentage is taken out of "42% done"; not a stage.
_FILLER_STAGES = frozenset({"done", "complete", "completed", "finished", "progress", "total", "overall"})

_STAGE_LEAD = " \t:;,.-–—|>)]}=#*~•·"
_STAGE_TAIL = " \t:;,.…-–—|([{=<>#*~•·"
# What is left of "(42%)" once the percentage is cut out of a stage.
_EMPTY_BRACKETS_RE = re.compile(r"\(\s*\)|\[\s*\]")

# What a parsed line means to the tracker: a step boundary, a percentage of the whole run, or a bare
# percentage that, once a step is known, is the progress inside that step (pv, rsync, a pg_dump wrapper).
_KIND_STEP = 0
_KIND_OVERALL = 1
_KIND_BARE = 2


def _stage_text(text: str) -> str | None:
    if "(" in text or "[" in text:
        text = _EMPTY_BRACKETS_RE.sub(" ", text)
    text = " ".join(text.split()).lstrip(_STAGE_LEAD).rstrip(_STAGE_TAIL)
    if not any(ch.isalnum() for ch in text):
        return None
    if len(text) > MAX_STAGE_CHARS:
        text = text[:MAX_STAGE_CHARS].rstrip(_STAGE_TAIL)
    return text


def _valid_step(n: int, total: int) -> bool:
    return 0 < total <= 1000 and 0 <= n <= total


def _percent_in(line: str, low: str) -> tuple[float, int, int, int] | None:
    """(value, start, end, kind) of the line's percentage, if it states one about the run."""
    if "progress" in low:
        m = _KEYWORD_RE.search(line)
        if m is not None:
            value = float(m.group(1))
            if value <= 100:
                return value, m.start(), m.end(), _KIND_OVERALL
    if "%" in line:
        # Only the first percentage counts: later ones are usually rates or ratios of the same thing.
        m = _BARE_PERCENT_RE.search(line)
        if m is not None:
            value = float(m.group(1))
            if value <= 100 and _NOT_PROGRESS_RE.search(line) is None and _DF_ROW_RE.match(line) is None:
                return value, m.start(), m.end(), _KIND_BARE
    return None


def _parse(line: str) -> tuple[Marker, int] | None:
    """Marker of a cleaned line plus how the tracker should read it."""
    low = line.lower()
    step: tuple[int, int] | None = None
    step_end = 0
    if "/" in line and ("[" in line or "(" in line):
        m = _BRACKET_STEP_RE.match(line)
        if m is not None:
            a, b, c, d = m.groups()
            n, total = (int(a), int(b)) if a is not None else (int(c), int(d))
            if _valid_step(n, total):
                step, step_end = (n, total), m.end()
    if step is None and "step" in low:
        for m in _STEP_WORD_RE.finditer(line):
            n, total = int(m.group(1)), int(m.group(2))
            if _valid_step(n, total):
                step, step_end = (n, total), m.end()
                break

    found = _percent_in(line, low)

    if step is not None:
        n, total = step
        percent = max(0.0, (n - 1) / total * 100)
        text = line[step_end:]
        if found is not None:
            value, start, end, kind = found
            # "PROGRESS: 42" speaks for the whole run; "[3/7] Dumping 50%" is halfway through step 3.
            in_step = max(0.0, (n - 1 + value / 100) / total * 100)
            percent = value if kind == _KIND_OVERALL else in_step
            if start >= step_end:
                text = line[step_end:start] + " " + line[end:]
        stage = _stage_text(text) or f"Step {n}/{total}"
        return Marker(min(percent, 100.0), stage, step), _KIND_STEP

    if found is None:
        return None
    value, start, end, kind = found
    prefix = _PREFIX_RE.match(line, 0, start)
    prefix_end = prefix.end() if prefix is not None else 0
    rest = _stage_text(line[prefix_end:start] + " " + line[end:])
    # Text round a percentage is a stage only when it reads like one ("Uploading 42%"), not like the sizes,
    # rates and times a transfer tool prints next to it.
    readable = rest is not None and rest[0].isalpha() and not any(ch.isdigit() for ch in rest)
    stage = rest if readable and rest.lower() not in _FILLER_STAGES else None
    return Marker(value, stage, None), kind


def parse_marker(line: str) -> Marker | None:
    """Recognise the markers in an already-cleaned line.

    Styles: ``[3/7] text``, ``Step 3/7: text`` / ``STEP 3 of 7 - text`` (case-insensitive), ``(3/7)`` at line
    start, ``PROGRESS: 42`` / ``progress=42.5`` / ``Progress 42%``, a bare ``42%`` anywhere (the first
    percentage in the line, 0..100 only). Step n/N is the start of step n: percent = (n-1)/N*100; a bare
    percentage on the same line is progress within that step. ``[n/N]`` / ``(n/N)`` count only at the start
    of the line, after an optional timestamp, log level and decoration; ``Step n/N`` may be anywhere.
    Nonsense is rejected: N == 0, n > N, N > 1000, percentages over 100, dates, fractions inside paths,
    compression ratios and disk/CPU usage figures.
    """
    if not (line.isascii() and line.isprintable()):
        # Cheap insurance for callers that pass a raw line.
        line = clean_line(line)
    parsed = _parse(line)
    return None if parsed is None else parsed[0]


# ------------------------------------------------------------------------------------- folders, errors

# Only the exact name production-backup.sh creates; the look-arounds stop it from matching inside a longer
# word ("mybackup-...", "backup-20250101_000000x", "backup-20250101_000000.tar.gz").
_FOLDER_RE = re.compile(r"(?<![\w.-])backup-(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})(?![\w-]|\.\w)")


def find_backup_folder(line: str) -> str | None:
    """The backup folder a line names, as a bare folder name ``backup-YYYYmmdd_HHMMSS``.

    ``/root/BACKUPS/production/backup-20250821_030001/`` -> ``backup-20250821_030001``; also
    ``Backup directory: backup-20250821_030001``. Returns None unless that exact pattern, with a plausible
    date and time, appears as a whole path component. The result never holds a slash or ``..``: callers join
    it to BACKUP_ROOT themselves.
    """
    if "backup-" not in line:
        return None
    if not (line.isascii() and line.isprintable()):
        # Colour codes glued to the name ("\x1b[1mbackup-...") would defeat the word boundary.
        line = clean_line(line)
    for m in _FOLDER_RE.finditer(line):
        _, month, day, hour, minute, second = (int(g) for g in m.groups())
        if 1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 59:
            return m.group(0)
    return None


_ERROR_WORDS = ("error", "fatal", "fail", "critical", "traceback", "no space", "permission", "not found")
# Word match, but not inside paths or option names ("error.log", "--on-error", "non-fatal"), and not a
# zero counter ("failed=0").
_ERROR_RE = re.compile(
    r"(?<![\w/.-])(?:error|fatal|failed|critical|traceback)(?![\w-]|\.\w|\s?=\s?0\b)"
    r"|\bno space left on device\b|\bpermission denied\b|\bcommand not found\b",
    re.IGNORECASE,
)
_ERROR_SIGNS = "❌✗✘✖⛔🛑"
# A failure sign counts at the start of the line, also after a timestamp or log level.
_ERROR_SIGN_RE = re.compile(_PREFIX + rf"[{_ERROR_SIGNS}]", re.VERBOSE)


# Cheap hints, checked once per batch of lines: a batch without any cannot hold an error or a marker.
ERROR_HINTS = (*_ERROR_WORDS, *_ERROR_SIGNS)
MARKER_HINTS = ("%", "/", "step", "progress")


def may_hold(hints: tuple[str, ...], lowered_text: str) -> bool:
    return any(hint in lowered_text for hint in hints)


def is_error_line(line: str) -> bool:
    """True for lines that look like errors: ERROR / FATAL / FAILED / CRITICAL / Traceback /
    ``No space left on device`` / ``Permission denied`` / ``command not found`` (case-insensitive, whole
    words), or a line starting with ❌ / ✗ (also ✘ ✖ ⛔ 🛑). Works on raw and on cleaned lines."""
    if not line.isascii():
        head = line.lstrip()
        if "\x1b" in head[:256] or "\x9b" in head[:256]:
            head = _ANSI_RE.sub("", head[:256]).lstrip()
        if _ERROR_SIGN_RE.match(head) is not None:
            return True
    cleaned = clean_line(line)
    low = cleaned.lower()
    if not any(word in low for word in _ERROR_WORDS):
        return False
    return _ERROR_RE.search(cleaned) is not None


# --------------------------------------------------------------------------------------------- tracker


def eta_seconds(elapsed: float, percent: int, expected_duration: float | None) -> float | None:
    """Remaining seconds of a run: expected_duration - elapsed while the previous successful run's
    duration is known and not yet exceeded; otherwise from the rate so far, elapsed * (100 - p) / p once
    p >= 5; otherwise None. The one ETA formula (the tracker and the API's run document use it)."""
    if not math.isfinite(elapsed) or elapsed < 0:
        return None
    usable = expected_duration is not None and math.isfinite(expected_duration) and expected_duration > 0
    if usable and elapsed < expected_duration:
        return expected_duration - elapsed
    # Past the previous run's duration that figure says nothing; the rate at least moves with the run.
    if percent >= 5 and elapsed > 0:
        return elapsed * (100 - percent) / percent
    return None


@dataclass(frozen=True)
class Progress:
    percent: int  # 0..100
    stage: str
    message: str


_new_object = object.__new__


def _progress(percent: int, stage: str, message: str) -> Progress:
    # A frozen dataclass's __init__ goes through object.__setattr__ three times, which is most of the
    # per-line budget when a new Progress is due for nearly every output line. Filling __dict__ directly
    # builds the identical object (same fields, equality, repr, hash) for about a third of the cost.
    progress = _new_object(Progress)
    fields = progress.__dict__
    fields["percent"] = percent
    fields["stage"] = stage
    fields["message"] = message
    return progress


class ProgressTracker:
    """Turns a run's stream of lines (and, where a script prints no markers, the artifacts appearing in its
    folder, and elapsed time against the previous run's duration) into a Progress that never goes down and
    stays <= 99 until finish(success=True)."""

    __slots__ = (
        "_artifacts",
        "_artifact_index",
        "_current",
        "_expected_duration",
        "_finished",
        "_message",
        "_percent",
        "_present",
        "_saw_markers",
        "_stage",
        "_step",
        "_succeeded",
    )

    def __init__(
        self, expected_artifacts: Sequence[str] = DEFAULT_ARTIFACTS, expected_duration: float | None = None
    ) -> None:
        names = [name.strip().rstrip("/") for name in expected_artifacts]
        self._artifacts: tuple[str, ...] = tuple(dict.fromkeys(name for name in names if name))
        self._artifact_index: dict[str, int] = {name: i for i, name in enumerate(self._artifacts)}
        usable = expected_duration is not None and math.isfinite(expected_duration) and expected_duration > 0
        self._expected_duration: float | None = float(expected_duration) if usable else None
        self._present: set[str] = set()
        self._percent = 0
        self._stage = "starting"
        self._message = ""
        self._step: tuple[int, int] | None = None
        self._saw_markers = False
        self._finished = False
        self._succeeded = False
        self._current = _progress(0, "starting", "")

    @property
    def current(self) -> Progress:
        return self._current

    @property
    def saw_markers(self) -> bool:
        return self._saw_markers

    def _publish(self, percent: int, stage: str, message: str) -> Progress | None:
        if percent == self._percent and stage == self._stage and message == self._message:
            return None
        self._percent, self._stage, self._message = percent, stage, message
        self._current = progress = _progress(percent, stage, message)
        return progress

    def feed_line(self, raw_line: str) -> Progress | None:
        """Clean and parse one output line. The message becomes the cleaned line (if non-empty, truncated
        to 500 chars); stage and percent follow the markers. Returns the new Progress if percent, stage or
        message changed, else None."""
        if self._finished:
            return None
        # clean_line's fast path, inlined: this runs for every one of up to a million lines.
        if raw_line.isascii() and raw_line.isprintable():
            line = raw_line.strip()
            if "  " in line:
                line = " ".join(line.split())
        else:
            line = clean_line(raw_line)
        if not line:
            return None
        message = line[:MAX_MESSAGE_CHARS]

        # Every marker style needs a "%", a "/" next to a bracket, or one of two words; a line with none of
        # them (most of a tar or pg_dump listing) skips the regexes.
        if "%" in line or ("/" in line and ("[" in line or "(" in line)):
            parsed = _parse(line)
        else:
            low = line.lower()
            parsed = _parse(line) if ("step" in low or "progress" in low) else None

        if parsed is None:
            if message == self._message:
                return None
            self._message = message
            # _progress() inlined, for the same reason.
            progress = _new_object(Progress)
            fields = progress.__dict__
            fields["percent"] = self._percent
            fields["stage"] = self._stage
            fields["message"] = message
            self._current = progress
            return progress

        marker, kind = parsed
        self._saw_markers = True
        value = marker.percent
        stage = self._stage
        if kind == _KIND_STEP:
            self._step = marker.step
            stage = marker.stage or stage
        elif kind == _KIND_BARE and self._step is not None and value is not None:
            # Within a known step a bare percentage is that step's own progress; the step keeps its name.
            n, total = self._step
            value = (n - 1 + value / 100) / total * 100
        elif marker.stage:
            stage = marker.stage
        percent = self._percent
        if value is not None:
            # int() floors, so 99.9 stays 99; a script's own "100%" before it exits is not success yet.
            percent = max(percent, min(MAX_RUNNING_PERCENT, int(value)))
        return self._publish(percent, stage, message)

    def feed_artifacts(self, present: Iterable[str]) -> Progress | None:
        """Names (top-level entries) currently in the run's backup folder. Used only while no explicit marker
        has been seen: percent = share of expected artifacts present, scaled to at most 95; stage =
        "writing <newest artifact>" (newest = latest in the expected order among those that just appeared).
        Returns the new Progress or None."""
        if self._finished or self._saw_markers or not self._artifacts:
            return None
        newest = -1
        for raw_name in present:
            name = raw_name.rstrip("/")
            index = self._artifact_index.get(name)
            if index is None:
                index = self._match_variant(name)
                if index is None:
                    continue
            artifact = self._artifacts[index]
            if artifact not in self._present:
                self._present.add(artifact)
                newest = max(newest, index)
        if newest < 0:
            return None
        # An artifact that has appeared is being written, and the ones before it are finished; counting it
        # as done is the spec's choice and the 95 cap leaves room for the last one.
        share = int(len(self._present) / len(self._artifacts) * MAX_ESTIMATED_PERCENT)
        stage = f"writing {self._artifacts[newest]}"
        return self._publish(max(self._percent, share), stage, self._message)

    def _match_variant(self, name: str) -> int | None:
        # Scripts of other vintages compress or suffix their dumps: "beauty_audit.sql.gz", "configs.tar".
        for index, artifact in enumerate(self._artifacts):
            if name.startswith(artifact + "."):
                return index
        return None

    def feed_elapsed(self, seconds: float) -> Progress | None:
        """With expected_duration (the previous successful run's duration) and no marker seen yet: a
        time-based estimate, percent = max(current, min(95, seconds / expected * 100)). Returns the new
        Progress or None."""
        expected = self._expected_duration
        if self._finished or self._saw_markers or expected is None:
            return None
        if not math.isfinite(seconds) or seconds <= 0:
            return None
        estimate = int(min(float(MAX_ESTIMATED_PERCENT), seconds / expected * 100))
        if estimate <= self._percent:
            return None
        return self._publish(estimate, self._stage, self._message)

    def eta_seconds(self, elapsed: float) -> float | None:
        """Remaining seconds by :func:`eta_seconds`; 0.0 after a successful finish, None after a failure."""
        if self._finished:
            return 0.0 if self._succeeded else None
        return eta_seconds(elapsed, self._percent, self._expected_duration)

    def finish(self, success: bool, message: str = "") -> Progress:
        """success: percent 100, stage "completed". Failure: percent unchanged, stage "failed". The message
        replaces the last output line when given. The first call decides; later calls return the same
        Progress, so a late failure report cannot undo a success or the other way round."""
        if self._finished:
            return self._current
        self._finished = True
        self._succeeded = success
        text = clean_line(message)[:MAX_MESSAGE_CHARS] if message else ""
        text = text or self._message
        if success:
            self._percent, self._stage = 100, "completed"
        else:
            self._stage = "failed"
        self._message = text
        self._current = _progress(self._percent, self._stage, text)
        return self._current
