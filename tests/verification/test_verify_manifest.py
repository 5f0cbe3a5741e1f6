"""sha256sum manifests: read as coreutils writes them, written as the reference script writes them."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from backups.verification.manifest import (
    ManifestError,
    build_manifest,
    parse_manifest,
)
from backups.verification.streams import Cancelled
from tests.verification.backup_fixtures import Opener, listing

DIGEST = hashlib.sha256(b"x").hexdigest()


def test_dot_slash_prefix_binary_mark_and_bsd_tag_lines_are_read() -> None:
    text = f"{DIGEST}  ./a.sql\n{DIGEST.upper()} *b.tar.gz\nSHA256 (c/d.txt) = {DIGEST}\n\n"
    entries = parse_manifest(text)
    assert [(e.path, e.sha256, e.line) for e in entries] == [
        ("a.sql", DIGEST, 1),
        ("b.tar.gz", DIGEST, 2),
        ("c/d.txt", DIGEST, 3),
    ]


def test_names_sha256sum_escapes_are_read_back(tmp_path: Path) -> None:
    names = ["back\\slash.txt", "new\nline.txt", "plain name.txt"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    out = subprocess.run(["sha256sum", "--", *names], cwd=tmp_path, capture_output=True, check=True).stdout
    entries = {entry.path: entry.sha256 for entry in parse_manifest(out)}
    assert entries == {name: hashlib.sha256(name.encode()).hexdigest() for name in names}


@pytest.mark.parametrize(
    "text, line",
    [
        (f"{DIGEST}  a\nnot a line\n", 2),
        (f"{DIGEST[:-1]}  a\n", 1),
        (f"{DIGEST}a\n", 1),
        (f"{DIGEST}  a\n{DIGEST}  ./a\n", 2),
        ("\\" + DIGEST + "  bad\\escape\n", 1),
    ],
)
def test_malformed_line_refuses_the_whole_manifest_with_its_line_number(text: str, line: int) -> None:
    with pytest.raises(ManifestError) as raised:
        parse_manifest(text)
    assert raised.value.line == line
    assert f"line {line}" in str(raised.value)


def test_empty_manifest_is_refused() -> None:
    with pytest.raises(ManifestError, match="lists no files"):
        parse_manifest("\n\n")


def test_built_manifest_equals_the_one_the_reference_script_wrote(script_backup: Path) -> None:
    built = build_manifest(listing(script_backup), Opener(script_backup))
    assert built == (script_backup / "MANIFEST.sha256").read_text()


def test_built_manifest_escapes_names_like_sha256sum(tmp_path: Path) -> None:
    for name in ["a\\b", "c\nd", "e"]:
        (tmp_path / name).write_bytes(b"data")
    built = build_manifest(listing(tmp_path), Opener(tmp_path))
    check = subprocess.run(["sha256sum", "-c", "-"], cwd=tmp_path, input=built.encode(), capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(b": OK") == 3


def test_build_manifest_reports_progress_and_can_be_cancelled(tmp_path: Path) -> None:
    for index in range(3):
        (tmp_path / f"f{index}").write_bytes(bytes(3 << 20))
    seen: list[int] = []
    build_manifest(listing(tmp_path), Opener(tmp_path), on_progress=lambda pct, _msg: seen.append(pct))
    assert seen == sorted(seen) and seen[-1] == 100 and len(seen) > 3
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        build_manifest(listing(tmp_path), Opener(tmp_path), should_stop=lambda: next(calls) >= 4)
