"""The README is a script: its REST API block, pasted into bash line by line against a freshly started
`serve` (the reference script, an empty backup root), runs without a single failing line. Only the token
and the base URL are substituted; every curl call's HTTP status is read with `-w`, which writes to
stderr so the commands' own output (pipes into jq, `-OJ` files) stays exactly as pasted."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT, manage

README = PROJECT / "README.md"
README_BASE = "http://127.0.0.1:6027"
STATUS, EXIT = "@@status", "@@exit"


def readme_commands() -> list[str]:
    """The commands of the README's REST API block: continuation lines joined, comment lines dropped."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    block = next(b for b in blocks if "create_admin_token" in b and "/api/backup/create" in b)
    commands, pending = [], ""
    for line in block.splitlines():
        if pending:
            line = pending + "\n" + line
            pending = ""
        if line.rstrip().endswith("\\"):
            pending = line
            continue
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line)
    return commands


def documented_status(command: str) -> int | None:
    """The status a line promises in its comment when the comment starts with one (`# 202 {"run"…}`)."""
    match = re.search(r"\s#\s+(\d{3})\b", command)
    return int(match.group(1)) if match else None


def test_the_readme_links_only_to_files_of_the_repository() -> None:
    text = README.read_text()
    assert "../" not in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith(("http://", "https://")):
            assert (PROJECT / target).exists(), target


def test_the_command_block_has_no_placeholder_ids() -> None:
    for command in readme_commands():
        code = "\n".join(re.sub(r"\s#\s.*$", "", line) for line in command.splitlines())
        assert not re.search(r"<[a-z-]+>|backup-\d{8}_\d{6}", code), command


@pytest.mark.slow
def test_every_line_of_the_readme_api_block_works_when_pasted(start_server, tmp_path: Path) -> None:
    if shutil.which("jq") is None:
        pytest.skip("the README's block uses jq (apt-get install jq)")
    server = start_server(BACKUP_STEP_DELAY="0.2", ALLOW_DEMO_DUMPS="1")
    minted = manage(server.env, "create_admin_token", "readme-reader")
    assert minted.returncode == 0, minted.stderr[-2000:]
    token = minted.stdout.strip().splitlines()[-1]

    commands = readme_commands()
    assert commands[0].startswith("T=$("), "the block starts by making a token"
    lines = [f"T='{token}'"]
    # The status of every curl call, on stderr (10 s cap per call so a hang fails the test, not CI).
    lines.append("curl() { command curl --max-time 10 -w '%{stderr}" + STATUS + ' %{http_code}\\n\' "$@"; }')
    for index, command in enumerate(commands[1:], start=1):
        lines.append(command.replace(README_BASE, server.base))
        lines.append(f'echo "{EXIT} {index} $?" >&2')
    work = tmp_path / "paste"
    work.mkdir()
    done = subprocess.run(
        ["bash", "-c", "\n".join(lines)], cwd=work, capture_output=True, text=True, timeout=180
    )

    statuses: dict[int, list[int]] = {}
    seen: list[int] = []
    exits: dict[int, int] = {}
    for line in done.stderr.splitlines():
        if line.startswith(STATUS):
            seen.append(int(line.split()[1]))
        elif line.startswith(EXIT):
            _, index, code = line.split()
            exits[int(index)], statuses[int(index)] = int(code), seen
            seen = []
    report = f"stderr:\n{done.stderr[-3000:]}\nserver:\n{server.log()}"
    assert sorted(exits) == list(range(1, len(commands))), report
    for index, command in enumerate(commands[1:], start=1):
        assert exits[index] == 0, f"{command!r} exited {exits[index]}\n{report}"
        if "curl" in command and not command.startswith(("H=", "idle()")):
            assert statuses[index], f"{command!r} made no request\n{report}"
        assert all(200 <= code < 300 for code in statuses[index]), f"{command!r}: {statuses[index]}\n{report}"
        promised = documented_status(command)
        if promised is not None:
            assert statuses[index][-1] == promised, f"{command!r}: {statuses[index]}\n{report}"

    # What the pasted lines left in the folder they ran in: the tar named after the real id, the config.
    tars = list(work.glob("backup-*.tar"))
    assert len(tars) == 1 and tars[0].stat().st_size > 0, list(work.iterdir())
    assert '"schedule"' in (work / "config.json").read_text()


def test_every_make_target_and_benchmark_the_readme_names_exists() -> None:
    text = README.read_text()
    targets = set(re.findall(r"^([a-z][a-z.-]*):", (PROJECT / "Makefile").read_text(), flags=re.M))
    for target in set(re.findall(r"\bmake ([a-z][a-z-]*)", text)):
        assert target in targets, f"make {target}"
    for script in set(re.findall(r"benchmarks/[a-z_]+\.py", text)):
        assert (PROJECT / script).is_file(), script
