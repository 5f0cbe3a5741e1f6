"""What a run's description may hold. Pure: the API's serializer and the admin's form both ask here."""

from __future__ import annotations

import unicodedata

MAX_LENGTH = 500
# Bidirectional embeddings, overrides and isolates: they make a log line read differently than it is.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def description_problem(value: str) -> str | None:
    """Why this description is refused, or None. A description is printed into the script's log and the
    run's output, so nothing in it may start a new line there or change how a line reads: C0 and C1
    controls (tabs excepted), line and paragraph separators, and bidi controls are refused."""
    if len(value) > MAX_LENGTH:
        return f"Ensure this field has no more than {MAX_LENGTH} characters."
    for ch in value:
        if ch == "\t":
            continue
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in BIDI_CONTROLS:
            return "Must not contain control characters."
    return None
