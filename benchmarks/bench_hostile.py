"""Hostile clients against a real `manage.py serve` (run under PYTHONFAULTHANDLER=1): a flood of clients
hanging up mid-download (tar and file), header bombs, slow-header connections, a huge Content-Length; and
download throughput on serve's h11 protocol beside plain uvicorn with httptools (the parser it replaced).

Run: .venv/bin/python benchmarks/bench_hostile.py [--flood N] [--slow N]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import (
    PROJECT,
    PYTHON,
    Report,
    RssSampler,
    Server,
    admin_token,
    bench_tmpdir,
    free_port,
    median,
    migrate,
    proc_status_kib,
    running,
    server_env,
)

from tests.servers import make_backup

BACKUP = "backup-20260101_030000"
BIG = 256 << 20
GIB = 1 << 30
CURL = shutil.which("curl")
FAILURE_MARKS = ("Fatal Python error", "Segmentation fault", "Traceback", "generator already executing")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_download(port: int, path: str, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed before the headers: {data[:200]!r}")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(data[:200])
    return sock


def aborted_download(port: int, path: str, token: str, index: int) -> None:
    sock = start_download(port, path, token)
    with contextlib.suppress(OSError):
        sock.recv((index % 8 + 1) * 65536)  # read a little, a different amount each time
    if index % 2:
        # RST instead of FIN: the server's next write fails instead of its next read seeing EOF.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def disconnect_flood(report: Report, server: Server, token: str, count: int, first_rss_kib: int) -> int:
    """One flood; returns the server's RSS (KiB) once it settled."""
    pid = server.pid
    paths = [f"/api/backup/{BACKUP}/download", f"/api/backup/{BACKUP}/download?file=big.bin"]
    fds_before = open_fds(pid)
    started = time.perf_counter()
    errors: list[str] = []
    with RssSampler(pid) as rss, ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(aborted_download, server.port, paths[i % 2], token, i) for i in range(count)]
        for future in futures:
            try:
                future.result()
            except Exception as error:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(error).__name__}: {error}")
    elapsed = time.perf_counter() - started
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and open_fds(pid) > fds_before + 2:
        time.sleep(0.2)
    fds_after = open_fds(pid)
    alive = server.process is not None and server.process.poll() is None
    log = server.log_path.read_text(errors="replace")
    marks = {mark: log.count(mark) for mark in FAILURE_MARKS if mark in log}
    report.add(
        f"disconnect flood: {count} downloads (half tar, half ?file=, half RST) aborted by the client",
        f"{elapsed:.1f} s, {len(errors)} client errors",
    )
    report.add("  server still running afterwards (same pid)", "yes" if alive else "NO", "yes", alive)
    found = str(marks or "none")
    report.add("  crash / traceback / generator marks in the server log", found, "none", not marks)
    report.add(
        "  open descriptors of the server: before → after",
        f"{fds_before} → {fds_after}",
        "≤ before + 2",
        fds_after <= fds_before + 2,
    )
    time.sleep(2)
    settled_kib = proc_status_kib(pid, "VmRSS")
    report.add("  server RSS, peak during the flood − before it", f"{rss.growth_mb:.1f} MB")
    grown = (settled_kib - first_rss_kib) * 1024 / 1e6
    report.add("  server RSS, 2 s after the flood − before the first flood", f"{grown:.1f} MB")
    if errors:
        report.note(f"first client errors: {errors[:3]}")
    return settled_kib


def header_bomb(report: Report, server: Server, clients: int = 10, size: int = 64 << 20) -> None:
    pid = server.pid
    line = b"X-Bomb: " + b"a" * size + b"\r\n"
    answers: list[bytes] = []

    def bomb() -> None:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            with contextlib.suppress(OSError):
                sock.sendall(line + b"\r\n")
            try:
                answers.append(sock.recv(4096))
            except OSError:
                answers.append(b"")
        finally:
            sock.close()

    before = proc_status_kib(pid, "VmHWM")
    rss_before = proc_status_kib(pid, "VmRSS")
    started = time.perf_counter()
    threads = [threading.Thread(target=bomb) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.perf_counter() - started
    peak_growth = max(0, proc_status_kib(pid, "VmHWM") - max(before, rss_before)) * 1024 / 1e6
    refused = sum(answer.startswith(b"HTTP/1.1 431") for answer in answers)
    report.add(
        f"header bomb: {clients} connections × {size >> 20} MB header line",
        f"{refused}/{clients} answered 431 (others reset), {elapsed:.1f} s",
    )
    report.add("  server peak RSS growth (VmHWM)", f"{peak_growth:.1f} MB", "< 50 MB", peak_growth < 50)


def slow_headers(report: Report, server: Server, count: int, timeout_s: int) -> None:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        sockets.append(sock)
    started = time.monotonic()
    closed: list[float] = []
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for sock in sockets:
                if sock.fileno() < 0:
                    continue
                try:
                    sock.sendall(b"X")  # one byte every half second: never the end of the headers
                except OSError:
                    sock.close()
                    closed.append(time.monotonic() - started)
            time.sleep(0.5)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    latencies = []
    while time.monotonic() - started < timeout_s + 8 and len(closed) < count:
        t0 = time.perf_counter()
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request("GET", "/health")
            connection.getresponse().read()
            connection.close()
            latencies.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.5)
    stop.set()
    trickler.join()
    for sock in sockets:
        sock.close()
    last = max(closed) if closed else float("nan")
    report.add(
        f"slow headers: {count} connections trickling 1 byte / 0.5 s (HEADER_TIMEOUT_SECONDS={timeout_s})",
        f"{len(closed)}/{count} closed by the server, the last after {last:.1f} s",
        f"all, ≤ {timeout_s + 2} s",
        len(closed) == count and last <= timeout_s + 2,
    )
    answered = f"{median(latencies):.1f} ms ({len(latencies)} requests)"
    report.add("  /health meanwhile, median latency", answered)


def huge_body(report: Report, server: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    started = time.perf_counter()
    sock.sendall(
        b"POST /api/backup/create HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 499000000\r\n\r\n"
    )
    answer = sock.recv(4096)
    elapsed = (time.perf_counter() - started) * 1000
    sock.close()
    report.add(
        "POST with Content-Length: 499000000 (no token), body not sent",
        f"{answer.split(b' ', 2)[1].decode() if answer else 'closed'} after {elapsed:.1f} ms",
        "413 at once",
        answer.startswith(b"HTTP/1.1 413"),
    )


def curl_rate(port: int, path: str, token: str, size: int) -> float:
    assert CURL is not None
    started = time.perf_counter()
    subprocess.run(
        [
            CURL,
            "-sf",
            "-o",
            "/dev/null",
            "-H",
            f"Authorization: Bearer {token}",
            f"http://127.0.0.1:{port}{path}",
        ],
        check=True,
        timeout=300,
    )
    return size / (time.perf_counter() - started) / 1e6


def throughput(report: Report, tmp: Path, env: dict[str, str], token: str, rounds: int = 5) -> None:
    """The two servers side by side, measured in alternation so that the machine's noise hits both."""
    if CURL is None:
        report.note("curl not found: throughput not measured")
        return
    folder = tmp / "backups" / BACKUP
    with open(folder / "huge.bin", "wb") as handle:
        handle.truncate(GIB)
    path = f"/api/backup/{BACKUP}/download?file=huge.bin"
    server = Server(tmp, env)
    server.start()
    port = free_port()
    plain = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "uvicorn",
            "backup_platform.asgi:application",
            "--http",
            "httptools",
            "--port",
            str(port),
            "--lifespan",
            "off",
            "--no-access-log",
        ],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    rates: dict[str, list[float]] = {"h11": [], "httptools": []}
    try:
        with running(server):
            for _ in range(100):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                time.sleep(0.1)
            curl_rate(port, path, token, GIB)  # warm both (page cache, first-request costs)
            curl_rate(server.port, path, token, GIB)
            for _ in range(rounds):
                rates["h11"].append(curl_rate(server.port, path, token, GIB))
                rates["httptools"].append(curl_rate(port, path, token, GIB))
    finally:
        os.killpg(plain.pid, 15)
        plain.wait(30)
        (folder / "huge.bin").unlink()
    h11, httptools = median(rates["h11"]), median(rates["httptools"])
    report.add(f"?file= 1 GiB, serve (h11, limits on), curl, median of {rounds}", f"{h11:,.0f} MB/s")
    report.add(f"?file= 1 GiB, plain uvicorn, httptools, curl, median of {rounds}", f"{httptools:,.0f} MB/s")
    ratio = median([a / b for a, b in zip(rates["h11"], rates["httptools"], strict=True)])
    report.add("h11 / httptools, median of the paired runs", f"{ratio:.2f}×", "≥ 0.8×", ratio >= 0.8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=300)
    options = parser.parse_args()
    report = Report("Hostile clients (serve under PYTHONFAULTHANDLER=1)")
    with bench_tmpdir("bench-hostile-") as tmp:
        env = server_env(tmp, PYTHONFAULTHANDLER="1", HEADER_TIMEOUT_SECONDS="5")
        folder = make_backup(tmp / "backups", BACKUP, {"db.sql": "dump\n", "configs/app.env": "A=1\n"})
        with open(folder / "big.bin", "wb") as handle:
            handle.truncate(BIG)
        migrate(env)
        token = admin_token(env)
        server = Server(tmp, env)
        server.start()
        with running(server):
            # The header bomb first: VmHWM is the peak since start, so it must not follow the floods.
            header_bomb(report, server)
            huge_body(report, server)
            slow_headers(report, server, options.slow, 5)
            paths = [f"/api/backup/{BACKUP}/download", f"/api/backup/{BACKUP}/download?file=big.bin"]
            for index, path in enumerate(paths * 4):  # warm up
                aborted_download(server.port, path, token, index)
            time.sleep(1)
            first = proc_status_kib(server.pid, "VmRSS")
            settled = [disconnect_flood(report, server, token, options.flood, first) for _ in range(3)]
            # The reader threads' allocator arenas keep what the first flood's 16 parallel 2 MiB chunks
            # needed; a leak would grow again with every flood.
            growth = [(b - a) * 1024 / 1e6 for a, b in zip(settled, settled[1:], strict=False)]
            report.add(
                "RSS growth of floods 2 and 3 over the one before (a leak would repeat)",
                " / ".join(f"{value:.1f} MB" for value in growth),
                "< 20 MB each",
                all(value < 20 for value in growth),
            )
        throughput(report, tmp, env, token)
    print(report.render())


if __name__ == "__main__":
    sys.exit(main())
