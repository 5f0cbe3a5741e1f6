"""A minimal HTTP/1.1 file server using sendfile(2), as an nginx stand-in for bench_download.py.

`python benchmarks/_sendfile_server.py ROOT PORT` serves `GET /<relative path>` of regular files under ROOT on
127.0.0.1:PORT, one thread per connection, with keep-alive. Not a general server: just the kernel's
file→socket path, which is what nginx with `sendfile on` measures.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import unquote


def _serve_connection(conn: socket.socket, root: Path) -> None:
    with conn:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                if len(buffer) > 65536:
                    return
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) < 2 or parts[0] != b"GET":
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                continue
            path = (root / unquote(parts[1].decode()).lstrip("/")).resolve()
            if root not in path.parents or not path.is_file():
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: %d\r\n\r\n" % size
                )
                offset = 0
                while offset < size:
                    sent = os.sendfile(conn.fileno(), handle.fileno(), offset, size - offset)
                    if sent == 0:
                        return
                    offset += sent


def main() -> int:
    root, port = Path(sys.argv[1]).resolve(), int(sys.argv[2])
    with socket.create_server(("127.0.0.1", port), backlog=16) as server:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_serve_connection, args=(conn, root), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
