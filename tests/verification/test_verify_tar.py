"""The streaming tar walker against archives written by GNU tar, and against damaged ones."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from backups.verification.streams import ByteStream, _plain
from backups.verification.tar import TarError, iter_tar

LONG = "deep/" + "d" * 120 + "/" + "n" * 150 + ".txt"


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        LONG: b"long name\n",
        "unicod\u00e9/fi\u010dier.bin": os.urandom(70_000),
        "empty": b"",
    }
    for rel, data in files.items():
        path = root / "t" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "t" / "link").symlink_to("a.txt")
    os.link(root / "t" / "a.txt", root / "t" / "hard")
    return {f"t/{rel}": data for rel, data in files.items()}


def _walk(data: bytes) -> list[tuple[str, str, bytes, str]]:
    found = []
    for member, content in iter_tar(ByteStream(_plain(iter([data])))):
        found.append((member.path, member.type, b"".join(content.chunks()), member.linkname))
    return found


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar", "v7"])
def test_members_and_data_match_what_gnu_tar_wrote(tmp_path: Path, fmt: str) -> None:
    files = _tree(tmp_path)
    if fmt in ("ustar", "v7"):
        # These formats cannot hold the long name.
        shutil.rmtree(tmp_path / "t" / "deep")
        files.pop(f"t/{LONG}")
    args = ["tar", f"--format={fmt}", "-C", str(tmp_path), "-cf", "-", "t"]
    data = subprocess.run(args, capture_output=True, check=True).stdout
    found = {path: (kind, content, link) for path, kind, content, link in _walk(data)}
    # tar stores the first of two hard-linked names it meets with the data, the other as a link to it.
    pair = sorted([found.pop("t/a.txt"), found.pop("t/hard")])
    assert pair[0][0] == "file" and pair[0][1] == b"alpha\n"
    assert pair[1][0] == "hardlink" and pair[1][2] in ("t/a.txt", "t/hard")
    for rel, content in files.items():
        if rel != "t/a.txt":
            assert found[rel] == ("file", content, "")
    assert found["t/link"] == ("symlink", b"", "a.txt")
    assert found["t"][0] == "dir"


def _archive(tmp_path: Path) -> bytes:
    _tree(tmp_path)
    args = ["tar", "-C", str(tmp_path), "-cf", "-", "t"]
    return subprocess.run(args, capture_output=True, check=True).stdout


def test_archive_cut_inside_member_data_names_the_member(tmp_path: Path) -> None:
    data = _archive(tmp_path)
    header = data.index("t/unicod\u00e9/fi\u010dier.bin".encode())
    offset = header + 512 + 30_000  # the 70,000-byte member is cut in its middle
    with pytest.raises(TarError, match="truncated inside member"):
        _walk(data[:offset])


def test_archive_without_end_marker_is_an_error(tmp_path: Path) -> None:
    data = _archive(tmp_path).rstrip(b"\0")
    data += b"\0" * (-len(data) % 512)
    with pytest.raises(TarError):
        _walk(data)


def test_archive_cut_inside_a_header_is_an_error(tmp_path: Path) -> None:
    data = _archive(tmp_path)
    with pytest.raises(TarError, match="truncated in the header"):
        _walk(data[: 512 + 100])


def test_corrupt_header_checksum_is_an_error(tmp_path: Path) -> None:
    data = bytearray(_archive(tmp_path))
    second = data.index(b"t/a.txt")
    data[second + 10] ^= 0x01
    with pytest.raises(TarError, match="corrupt tar header"):
        _walk(bytes(data))


def test_unread_member_data_is_skipped_exactly(tmp_path: Path) -> None:
    data = _archive(tmp_path)
    pieces = iter([data[i : i + 777] for i in range(0, len(data), 777)])
    names = [member.path for member, _ in iter_tar(ByteStream(pieces))]
    assert names == [path for path, *_ in _walk(data)]


def test_oversized_pax_header_is_refused() -> None:
    import tarfile

    info = tarfile.TarInfo("x")
    info.type = tarfile.XHDTYPE
    info.size = 64 << 20
    with pytest.raises(TarError, match="oversized"):
        _walk(info.tobuf(format=tarfile.USTAR_FORMAT) + bytes(1024))
