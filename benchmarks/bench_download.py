"""Download throughput and server memory: a 2 GiB backup as a tar stream and one 1 GiB `?file=` through
`manage.py serve` (uvicorn), beside a reference (nginx with sendfile if /usr/sbin/nginx exists, else `cat` to
/dev/null) and a minimal sendfile(2) server, all measured in the same run from page cache; plus a client
paced to 20 MB/s that reads ~400 MB and hangs up. RSS of the serve process is sampled every 50 ms, and
the CPU time (user + system) the serve process and nginx spend per GiB sent is read from /proc, which
shows what the service costs beside nginx when both are slowed alike by other work on the machine.

Run: .venv/bin/python benchmarks/bench_download.py
The 2 GiB of data are written once to /tmp/bench-download-cache and reused (hard-linked into the
temporary backup root) by later runs.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from _common import (
    PYTHON,
    Report,
    RssSampler,
    Server,
    admin_token,
    auth_headers,
    bench_tmpdir,
    free_port,
    http_get,
    median,
    migrate,
    proc_status_kib,
    running,
    server_env,
)

CACHE = Path("/tmp/bench-download-cache")
BACKUP_ID = "backup-20250101_030000"
GIB = 1 << 30
MIB = 1 << 20
# relative path -> size; the two big ones make the 2 GiB.
LAYOUT: dict[str, int] = {
    "database-1.bin": GIB,
    "database-2.bin": GIB,
    "beauty_audit.sql": 300_000,
    "configs/app.env": 2_000,
    "system-info/uname.txt": 500,
}
BIG_FILE = "database-1.bin"
REPEATS = 3
SLOW_RATE = 20e6  # bytes/s
SLOW_BYTES = 400_000_000
NGINX = Path("/usr/sbin/nginx")
CURL = shutil.which("curl")


def ensure_data() -> Path:
    """The cached backup folder with LAYOUT's sizes; (re)written only when missing or of the wrong size."""
    folder = CACHE / BACKUP_ID
    paths = {folder / rel: size for rel, size in LAYOUT.items()}
    if all(path.is_file() and path.stat().st_size == size for path, size in paths.items()):
        return folder
    shutil.rmtree(CACHE, ignore_errors=True)
    block = bytearray(os.urandom(MIB))
    for rel, size in LAYOUT.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            written = 0
            while written < size:
                block[:8] = written.to_bytes(8, "little")  # every MiB differs
                piece = memoryview(block)[: min(MIB, size - written)]
                out.write(piece)
                written += len(piece)
    return folder


def link_tree(source: Path, target: Path) -> None:
    """Hard links (same page cache, no copy) of every file of `source` under `target`."""
    for rel in LAYOUT:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(source / rel, target / rel)


# --- clients ----------------------------------------------------------------------------------------------


@dataclass
class Transfer:
    bytes: int
    seconds: float
    rss_growth_mb: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu_seconds / (self.bytes / GIB)

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6


def curl(url: str, token: str | None, expect_bytes: int) -> Transfer:
    assert CURL is not None
    command = [CURL, "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url]
    if token:
        command[1:1] = ["-H", f"Authorization: Bearer {token}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"curl {url}: exit {done.returncode} {done.stderr[-500:]}")
    size, seconds = done.stdout.split()
    if int(size) != expect_bytes:
        raise RuntimeError(f"curl {url}: {size} bytes, expected {expect_bytes}")
    return Transfer(int(size), float(seconds))


def cat(paths: list[Path]) -> Transfer:
    started = time.perf_counter()
    subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True, timeout=300)
    return Transfer(sum(p.stat().st_size for p in paths), time.perf_counter() - started)


def paced_download(port: int, path: str, token: str, rate: float, limit: int, max_seconds: float) -> Transfer:
    """Read `limit` bytes at `rate` bytes/s (64 KiB reads, sleeping to keep the pace), then hang up."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=auth_headers(token))
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status}")
        received = 0
        started = time.perf_counter()
        while received < limit and time.perf_counter() - started < max_seconds:
            data = response.read(64 * 1024)
            if not data:
                break
            received += len(data)
            ahead = received / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
        return Transfer(received, time.perf_counter() - started)
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its children still running (nginx's worker), from /proc."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            total += sum(cpu_seconds(int(child)) for child in children.read().split())
    except (OSError, ValueError, IndexError):
        pass
    return total


def sampled(pid: int, action: Callable[[], Transfer]) -> Transfer:
    before = cpu_seconds(pid)
    with RssSampler(pid) as sampler:
        transfer = action()
    transfer.rss_growth_mb = sampler.growth_mb
    transfer.cpu_seconds = cpu_seconds(pid) - before
    return transfer


# --- reference servers --------------------------------------------------------------------------------------


@contextlib.contextmanager
def process_group(command: list[str], log: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A helper server in its own process group, up once `port` answers; SIGTERM, then SIGKILL, at the end."""
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited {process.returncode}: {log.read_text()[-1000:]}")
            with contextlib.suppress(OSError):
                http_get(port, "/", timeout=1)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start: {log.read_text()[-1000:]}")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def nginx_command(tmp: Path, root: Path, port: int) -> list[str]:
    prefix = tmp / "nginx"
    (prefix / "logs").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    # Workers run as the invoking user: nginx's default (nobody) cannot read the 0700 temp folders.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""daemon off;
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy; fastcgi_temp_path {prefix}/fcgi;
    uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }}
}}
""")
    return [str(NGINX), "-p", str(prefix), "-c", str(conf)]


# --- the benchmark ----------------------------------------------------------------------------------------


def main() -> int:
    if CURL is None:
        print("curl is required (the fast client)", file=sys.stderr)
        return 1
    report = Report("Download: tar stream and ?file= through `manage.py serve` (uvicorn)")
    started = time.perf_counter()
    data = ensure_data()
    report.note(f"data ready in {time.perf_counter() - started:.1f} s ({CACHE}, reused when present)")
    with bench_tmpdir("bench-download-") as tmp, contextlib.ExitStack() as stack:
        root = tmp / "backups"
        folder = root / BACKUP_ID
        link_tree(data, folder)
        files = [folder / rel for rel in sorted(LAYOUT)]
        cat(files)  # into page cache
        env = server_env(tmp, BACKUP_ROOT=str(root))
        migrate(env)
        token = admin_token(env)
        server = stack.enter_context(running(Server(tmp, env)))
        server.start()

        sendfile_port = free_port()
        sendfile_server = [
            PYTHON,
            str(Path(__file__).with_name("_sendfile_server.py")),
            str(root),
            str(sendfile_port),
        ]
        stack.enter_context(process_group(sendfile_server, tmp / "sendfile.log", sendfile_port))
        nginx_port: int | None = None
        nginx_pid = 0
        if NGINX.exists():
            nginx_port = free_port()
            nginx_pid = stack.enter_context(
                process_group(nginx_command(tmp, root, nginx_port), tmp / "nginx.log", nginx_port)
            ).pid
        reference = "nginx sendfile" if nginx_port else "cat > /dev/null"

        path = f"/api/backup/{BACKUP_ID}/download"
        status, body = http_get(server.port, f"{path}?file=configs/app.env", token)
        if status != 200:
            raise RuntimeError(f"warm-up download: {status} {body[:200]!r}")
        tar_bytes = _content_length(server.port, path, token)
        results: dict[str, list[Transfer]] = {
            key: [] for key in ("tar", "file", "ref_tar", "ref_file", "sendfile_file")
        }
        nginx = f"http://127.0.0.1:{nginx_port}/{BACKUP_ID}"
        for _ in range(REPEATS):  # interleaved, so noise hits every row alike
            if nginx_port:
                results["ref_tar"].append(
                    sampled(
                        nginx_pid,
                        lambda: _sum([curl(f"{nginx}/{rel}", None, size) for rel, size in LAYOUT.items()]),
                    )
                )
                results["ref_file"].append(sampled(nginx_pid, lambda: curl(f"{nginx}/{BIG_FILE}", None, GIB)))
            else:
                results["ref_tar"].append(cat(files))
                results["ref_file"].append(cat([folder / BIG_FILE]))
            results["sendfile_file"].append(
                curl(f"http://127.0.0.1:{sendfile_port}/{BACKUP_ID}/{BIG_FILE}", None, GIB)
            )
            results["tar"].append(sampled(server.pid, lambda: curl(server.base + path, token, tar_bytes)))
            results["file"].append(
                sampled(server.pid, lambda: curl(f"{server.base}{path}?file={BIG_FILE}", token, GIB))
            )

        slow = {
            kind: sampled(
                server.pid,
                functools.partial(
                    paced_download, server.port, url, token, SLOW_RATE, SLOW_BYTES, max_seconds=60
                ),
            )
            for kind, url in (("tar", path), ("file", f"{path}?file={BIG_FILE}"))
        }
        health, _ = http_get(server.port, "/health")

        rate = {key: median([t.mb_s for t in values]) for key, values in results.items()}
        report.add(
            f"reference: {reference}, whole backup ({tar_bytes / GIB:.2f} GiB), median of {REPEATS}",
            f"{rate['ref_tar']:,.0f} MB/s",
        )
        report.add(f"reference: {reference}, {BIG_FILE} (1 GiB)", f"{rate['ref_file']:,.0f} MB/s")
        report.add("sendfile(2) server + curl, 1 GiB (nginx stand-in)", f"{rate['sendfile_file']:,.0f} MB/s")
        report.add(f"service tar download, curl, median of {REPEATS}", f"{rate['tar']:,.0f} MB/s")
        report.add(f"service ?file= download (1 GiB), curl, median of {REPEATS}", f"{rate['file']:,.0f} MB/s")
        for kind in ("tar", "file"):
            ratio = rate[kind] / rate[f"ref_{kind}"]
            report.add(f"{kind}: service / {reference}", f"{ratio:.2f}×", "≥ 0.8×", ratio >= 0.8)
            ratio = rate[kind] / rate["sendfile_file"]
            report.add(
                f"{kind}: service / sendfile server", f"{ratio:.2f}×", "≥ 0.6× (like-for-like)", ratio >= 0.6
            )
        cpu = {key: median([t.cpu_per_gib for t in results[key]]) for key in ("tar", "file")}
        for kind in ("tar", "file"):
            report.add(
                f"serve CPU (user + system) per GiB sent, {kind}, median of {REPEATS}", f"{cpu[kind]:.2f} s"
            )
        if nginx_port:
            ref_cpu = {key: median([t.cpu_per_gib for t in results[f"ref_{key}"]]) for key in ("tar", "file")}
            for kind in ("tar", "file"):
                report.add(
                    f"nginx CPU per GiB sent, {kind} files, median of {REPEATS}", f"{ref_cpu[kind]:.2f} s"
                )
        for kind in ("tar", "file"):
            growth = max(t.rss_growth_mb for t in results[kind])
            report.add(
                f"server RSS growth, fast {kind} (max of {REPEATS})",
                f"{growth:.1f} MB",
                "< 50 MB",
                growth < 50,
            )
        for kind, transfer in slow.items():
            report.add(
                f"server RSS growth, 20 MB/s client, {kind}, {transfer.bytes / 1e6:.0f} MB then "
                f"hang-up (client got {transfer.mb_s:.1f} MB/s)",
                f"{transfer.rss_growth_mb:.1f} MB",
                "< 50 MB",
                transfer.rss_growth_mb < 50,
            )
        report.add("server answers /health after the hang-ups", str(health), "200", health == 200)
        rss, hwm = (proc_status_kib(server.pid, name) * 1024 / 1e6 for name in ("VmRSS", "VmHWM"))
        report.note(f"serve process at the end: VmRSS {rss:.0f} MB, VmHWM (peak since start) {hwm:.0f} MB")
        report.note("MB = 10^6 bytes; fast client: curl -o /dev/null on loopback, rate from its time_total")
        if not nginx_port:
            report.note(
                "no /usr/sbin/nginx here: the reference is `cat` of the same files to /dev/null (no "
                "socket, no HTTP); the sendfile-server row is the like-for-like comparison"
            )
    print(report.render())
    return 0


def _sum(items: list[Transfer]) -> Transfer:
    return Transfer(sum(t.bytes for t in items), sum(t.seconds for t in items))


def _content_length(port: int, path: str, token: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=auth_headers(token))
        response = conn.getresponse()  # headers only: the body is abandoned by closing the connection
        return int(response.getheader("Content-Length") or 0)
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
