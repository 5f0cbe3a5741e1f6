"""The real `manage.py serve` under hostile clients: symlink swaps during downloads, files changing
mid-transfer, clients that hang up, header bombs, huge bodies, slow headers, forged forwarded headers.
Real processes, real sockets, real files."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import socket
import tarfile
import threading
import time
from pathlib import Path

import jwt
import pytest

from tests.conftest import make_backup

pytestmark = pytest.mark.slow

BACKUP = "backup-20260101_030000"
OUTSIDE_MARK = b"OUTSIDE-THE-ROOT-"


def token(server, sub: str = "admin-1") -> str:
    now = int(time.time())
    claims = {"sub": sub, "role": "SUPER_ADMIN", "iat": now, "exp": now + 600}
    return jwt.encode(claims, server.env["JWT_SECRET"], algorithm="HS256")


def get(server, path: str, *, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
    """Status, headers and the body as far as it came (a transfer cut short is returned short, with
    the header `x-transfer` set to "incomplete")."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        auth = {"Authorization": f"Bearer {token(server)}"}
        connection.request("GET", path, headers={**auth, **(headers or {})})
        response = connection.getresponse()
        found = {k.lower(): v for k, v in response.getheaders()}
        try:
            body = response.read()
        except http.client.IncompleteRead as error:
            body = error.partial
            found["x-transfer"] = "incomplete"
        except (ConnectionError, OSError):
            body = b""
            found["x-transfer"] = "incomplete"
        return response.status, found, body
    finally:
        connection.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def status_field(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


# ------------------------------------------------------------------------- descriptor-safe reads


def test_symlink_swap_race_never_serves_a_byte_from_outside_the_root(start_server, tmp_path):
    """While a thread renames configs/ away, puts a symlink to an outside folder with the same file
    names in its place and undoes it, 540 `?file=` downloads get the real file, whole, or a 404, and 20
    tar downloads a whole archive or a failed transfer; never a byte of the outside file."""
    root = tmp_path / "backups"
    folder = make_backup(root, BACKUP, {"configs/app.env": "INSIDE=1\n" * 50, "db.sql": "dump\n"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "app.env").write_bytes(OUTSIDE_MARK * 30)
    server = start_server()
    assert get(server, f"/api/backup/{BACKUP}")[0] == 200
    stop = threading.Event()
    swaps = 0

    def swap() -> None:
        nonlocal swaps
        while not stop.is_set():
            os.rename(folder / "configs", folder / "configs-real")
            os.symlink(outside, folder / "configs")
            time.sleep(0.0005)
            os.unlink(folder / "configs")
            os.rename(folder / "configs-real", folder / "configs")
            time.sleep(0.0005)
            swaps += 1

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    outcomes: dict[str, int] = {}
    try:
        for index in range(560):
            path = f"/api/backup/{BACKUP}/download" + ("?file=configs/app.env" if index % 28 else "")
            status, headers, body = get(server, path)
            assert OUTSIDE_MARK not in body, (index, status)
            if status == 200 and "x-transfer" not in headers:
                assert len(body) == int(headers["content-length"])
            key = f"{status}{'-cut' if 'x-transfer' in headers else ''}{'-tar' if '?' not in path else ''}"
            outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        stop.set()
        swapper.join()
    assert swaps > 100 and outcomes.get("200", 0) > 0, outcomes
    # A `?file=` download opens its file before the headers: once it answers 200, it is complete.
    assert "200-cut" not in outcomes, outcomes


def test_a_tree_longer_than_path_max_is_listed_and_downloadable_and_the_others_are_unaffected(
    start_server, tmp_path
):
    root = tmp_path / "backups"
    deep_folder = make_backup(root, BACKUP, {"db.sql": "dump\n"})
    make_backup(root, "backup-20260102_030000", {"db.sql": "other\n"})
    names = [f"{level:03d}" + "d" * 197 for level in range(25)]
    fd = os.open(deep_folder, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    out = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(out, b"at the bottom\n")
    os.close(out)
    os.close(fd)
    rel = "/".join(names) + "/deep.txt"
    assert len(rel) > 4096
    server = start_server()
    status, _, body = get(server, "/api/backup/list")
    assert status == 200 and json.loads(body)["count"] == 2
    status, _, body = get(server, f"/api/backup/{BACKUP}")
    document = json.loads(body)
    assert status == 200 and document["problems"] == [] and rel in [f["path"] for f in document["files"]]
    from urllib.parse import quote

    status, _, body = get(server, f"/api/backup/{BACKUP}/download?file={quote(rel)}")
    assert (status, body) == (200, b"at the bottom\n")
    status, headers, body = get(server, f"/api/backup/{BACKUP}/download")
    assert status == 200 and len(body) == int(headers["content-length"])
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.extractfile(f"{BACKUP}/{rel}").read() == b"at the bottom\n"
    status, _, body = get(server, "/api/backup/backup-20260102_030000/download?file=db.sql")
    assert (status, body) == (200, b"other\n")
    assert get(server, "/api/backup/status")[0] == 200


# ----------------------------------------------------------------------------- honest transfers


def _big_backup(root: Path, size: int = 48 << 20) -> Path:
    folder = make_backup(root, BACKUP, {"db.sql": "dump\n"})
    with open(folder / "big.bin", "wb") as handle:
        handle.truncate(size)  # sparse: fast to make, real bytes to read
    return folder


def _start_download(server, path: str) -> tuple[socket.socket, dict, bytes]:
    """Headers read, the first bytes of the body in hand, the rest left in the socket."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token(server)}\r\n\r\n"
    sock.sendall(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in lines[1:]}
    headers[":status"] = lines[0].split()[1]
    return sock, headers, rest


def _read_rest(sock: socket.socket, have: int, limit: int) -> int:
    total = have
    while total < limit:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionError:
            break
        if not chunk:
            break
        total += len(chunk)
    return total


@pytest.mark.parametrize("kind", ["file", "tar"])
def test_a_file_that_shrinks_mid_transfer_fails_the_transfer_instead_of_sending_a_short_body(
    start_server, tmp_path, kind
):
    folder = _big_backup(tmp_path / "backups")
    server = start_server()
    path = f"/api/backup/{BACKUP}/download" + ("?file=big.bin" if kind == "file" else "")
    assert get(server, f"/api/backup/{BACKUP}/download?file=db.sql")[0] == 200
    baseline = open_fds(server.process.pid)
    for _ in range(10):
        os.truncate(folder / "big.bin", 48 << 20)
        sock, headers, first = _start_download(server, path)
        try:
            assert headers[":status"] == "200"
            length = int(headers["content-length"])
            os.truncate(folder / "big.bin", 1 << 20)
            received = _read_rest(sock, len(first), length)
        finally:
            sock.close()
        assert received < length  # the connection was closed: the client knows the download failed
    log = server.log()
    assert "aborted" in log and "Traceback" not in log
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and open_fds(server.process.pid) > baseline + 2:
        time.sleep(0.2)
    assert open_fds(server.process.pid) <= baseline + 2, sorted(os.listdir(f"/proc/{server.process.pid}/fd"))


def test_clients_that_hang_up_mid_download_leave_no_open_files(start_server, tmp_path):
    _big_backup(tmp_path / "backups")
    server = start_server()
    pid = server.process.pid
    # Warm up: downloads held open at once take every kept request thread, each of which then keeps its
    # database connection (files that stay open by design, not per download).
    held = [
        _start_download(server, path)[0]
        for _ in range(6)
        for path in (f"/api/backup/{BACKUP}/download", f"/api/backup/{BACKUP}/download?file=big.bin")
    ]
    for sock in held:
        sock.close()
    time.sleep(1)
    baseline = open_fds(pid)
    for round_ in range(30):
        for path in (f"/api/backup/{BACKUP}/download", f"/api/backup/{BACKUP}/download?file=big.bin"):
            sock, headers, _ = _start_download(server, path)
            assert headers[":status"] == "200"
            if round_ % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and open_fds(pid) > baseline + 2:
        time.sleep(0.2)
    assert open_fds(pid) <= baseline + 2, sorted(os.listdir(f"/proc/{pid}/fd"))
    log = server.log()
    assert "generator already executing" not in log and "Traceback" not in log
    assert get(server, f"/api/backup/{BACKUP}/download?file=db.sql")[2] == b"dump\n"


def test_the_audit_of_a_download_records_the_bytes_actually_sent(start_server, tmp_path):
    _big_backup(tmp_path / "backups")
    server = start_server()
    status, headers, body = get(server, f"/api/backup/{BACKUP}/download?file=db.sql")
    assert (status, body) == (200, b"dump\n")
    sock, headers, first = _start_download(server, f"/api/backup/{BACKUP}/download")
    planned = int(headers["content-length"])
    received = _read_rest(sock, len(first), 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # hung up after 4 MB of a 48 MB tar

    def downloads() -> list[dict]:
        entries = json.loads(get(server, "/api/backup/logs?source=audit&lines=50")[2])["entries"]
        return [entry for entry in entries if entry["action"] == "backup.download"]

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "complete" not in (downloads()[-1:] or [{}])[0].get("details", {}):
        time.sleep(0.2)
    whole_file, cut_tar = downloads()
    assert whole_file["outcome"] == "ok"
    recorded = {key: whole_file["details"].get(key) for key in ("kind", "bytes", "planned_bytes", "complete")}
    assert recorded == {"kind": "file", "bytes": 5, "planned_bytes": 5, "complete": True}
    assert cut_tar["outcome"] == "incomplete" and cut_tar["details"]["kind"] == "tar"
    assert cut_tar["details"]["planned_bytes"] == planned and cut_tar["details"]["complete"] is False
    # Counted as handed to the server: what the client got, plus what was still in flight.
    assert received <= cut_tar["details"]["bytes"] < planned // 2


# ------------------------------------------------------------------------------ bounded requests


def test_a_64_mb_header_is_refused_and_memory_does_not_grow(start_server, tmp_path):
    server = start_server()
    pid = server.process.pid
    assert get(server, "/health")[0] == 200
    before = status_field(pid, "VmRSS")
    line = b"X-Bomb: " + b"a" * (64 << 20) + b"\r\n"

    def bomb() -> bytes:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(line + b"\r\n")  # refused before the header ended
            try:
                return sock.recv(4096)
            except ConnectionResetError:
                return b""
        finally:
            sock.close()

    threads = [threading.Thread(target=lambda: answers.append(bomb())) for _ in range(10)]
    answers: list[bytes] = []
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 10
    assert all(answer.startswith(b"HTTP/1.1 431") or answer == b"" for answer in answers), answers
    assert any(answer.startswith(b"HTTP/1.1 431") for answer in answers)
    assert status_field(pid, "VmHWM") - before < 50 << 20
    assert get(server, "/health")[0] == 200


def test_a_huge_content_length_is_413_at_once_without_reading_the_body(start_server, tmp_path):
    server = start_server()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    started = time.monotonic()
    sock.sendall(
        b"POST /api/backup/create HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 499000000\r\n\r\n" + b"{" * 1000
    )
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    elapsed = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"application/json" in answer and b"too large" in answer
    assert elapsed < 2
    # A chunked body has no length to refuse up front: it is cut off at the limit.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        b"POST /api/backup/create HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n"
    )
    piece = b"100000\r\n" + b" " * 0x100000 + b"\r\n"
    answer = b""
    try:
        for _ in range(4):
            sock.sendall(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    with contextlib.suppress(ConnectionResetError):
        answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer


def test_connections_that_do_not_finish_their_headers_are_closed(start_server, tmp_path):
    server = start_server(HEADER_TIMEOUT_SECONDS="2")
    sockets = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        sockets.append(sock)
    started = time.monotonic()
    closed_at: list[float] = []
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for sock in sockets:
                if sock.fileno() < 0:
                    continue
                try:
                    sock.sendall(b"X")
                except OSError:
                    sock.close()
                    closed_at.append(time.monotonic() - started)
            time.sleep(0.3)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(closed_at) < len(sockets):
        time.sleep(0.2)
    stop.set()
    trickler.join()
    for sock in sockets:
        sock.close()
    assert len(closed_at) == 300, len(closed_at)
    assert max(closed_at) < 6
    assert get(server, "/health")[0] == 200


def test_connections_beyond_the_cap_are_answered_503_and_the_server_recovers(start_server):
    """MAX_CONNECTIONS bounds what one client can hold open; the ones over it are told at once."""
    server = start_server(MAX_CONNECTIONS="8", HEADER_TIMEOUT_SECONDS="30")
    held = []
    for _ in range(12):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # headers never finished: the connection stays
        held.append(sock)
    time.sleep(0.5)
    over = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    over.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = over.recv(4096)
    over.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 5
    while get(server, "/health")[0] != 200:
        assert time.monotonic() < deadline, "the server did not recover once the connections closed"
        time.sleep(0.1)


# ------------------------------------------------------------------------------ forwarded headers


def _refused_from(server, forwarded: str) -> str | None:
    """The client address the audit trail recorded for a refused request carrying X-Forwarded-For."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/api/backup/status", headers={"X-Forwarded-For": forwarded})
    assert connection.getresponse().status == 401
    connection.close()
    status, _, body = get(server, "/api/backup/logs?source=audit&lines=20")
    refused = [e for e in json.loads(body)["entries"] if e["action"] == "auth.refused"]
    return refused[-1]["client_ip"]


def test_forwarded_headers_are_ignored_unless_behind_a_trusted_proxy(start_server, tmp_path):
    server = start_server()
    assert _refused_from(server, "203.0.113.9") == "127.0.0.1"
    server.stop()
    behind = start_server(BEHIND_PROXY="1", FORWARDED_ALLOW_IPS="127.0.0.1")
    assert _refused_from(behind, "203.0.113.9") == "203.0.113.9"
    assert _refused_from(behind, "not-an-address") is None
    behind.stop()
    elsewhere = start_server(BEHIND_PROXY="1", FORWARDED_ALLOW_IPS="192.0.2.1")
    assert _refused_from(elsewhere, "203.0.113.9") == "127.0.0.1"


def test_a_request_the_server_cannot_parse_is_answered_in_json(start_server, tmp_path):
    server = start_server()
    for raw in (b"NOT HTTP AT ALL\r\n\r\n", b"GET /api/backup/status HTTP/1.1\r\nBad Header\r\n\r\n"):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
        assert json.loads(body) == {"detail": "Invalid HTTP request."}
