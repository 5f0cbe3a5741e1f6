"""The pieces of the PostgreSQL plumbing that need no server: URL masking, the \\restrict line filter."""

from __future__ import annotations

import random

import pytest

from backups.verification.pg import Pg, RestrictLines, mask_url

SQL = (
    b"SET x;\n\\restrict abcDEF123\nCOPY t FROM stdin;\n\\N\tfoo restrict x\n\\\\restrict as data\n"
    b"x\\restrict mid-line\n\\.\n\\unrestrict abcDEF123\n\\connect other\n\\unrestrict last"
)
WITHOUT = (
    b"SET x;\nCOPY t FROM stdin;\n\\N\tfoo restrict x\n\\\\restrict as data\n"
    b"x\\restrict mid-line\n\\.\n\\connect other\n"
)


@pytest.mark.parametrize("seed", range(50))
def test_restrict_lines_are_dropped_wherever_the_chunks_split(seed: int) -> None:
    rng = random.Random(seed)
    lines = RestrictLines()
    out, pos = b"", 0
    while pos < len(SQL):
        step = rng.randint(1, 12)
        out += lines.feed(SQL[pos : pos + step])
        pos += step
    out += lines.feed(b"", final=True)
    assert out == WITHOUT
    assert lines.dropped == 3


def test_pg_keeps_the_password_out_of_conninfo_and_display() -> None:
    pg = Pg.from_url("postgresql://app:s3cret@db.example:6432/platform?sslmode=require")
    assert "s3cret" not in pg.conninfo and "s3cret" not in pg.display
    assert pg.password == "s3cret"
    assert pg.display == "postgresql://app:****@db.example:6432/platform?sslmode=require"
    assert pg.env()["PGPASSWORD"] == "s3cret"
    other = pg.database("scratch_1")
    assert other.dbname == "scratch_1" and other.display.endswith("/scratch_1?sslmode=require")
    assert (
        pg.scrub("failed for s3cret at postgresql://app:s3cret@h/x")
        == "failed for **** at postgresql://app:****@h/x"
    )
    assert mask_url("postgres://u@h/db") == "postgres://u@h/db"
