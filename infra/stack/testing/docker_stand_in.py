"""A stand-in for the Docker engine's ping endpoint, so the program's Docker probe has an engine to find when the
whole program runs under mocks (the mocks never build: they only record the image resource)."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def docker_ping_stand_in() -> Iterator[str]:
    """Serves `GET /_ping` → 200 OK on a unix socket and points DOCKER_HOST at it while the block runs."""
    with tempfile.TemporaryDirectory(prefix="docker-stand-in-") as directory:
        path = Path(directory) / "docker.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(8)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                with connection:
                    connection.recv(4096)
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

        thread = threading.Thread(target=serve, name="docker-stand-in", daemon=True)
        thread.start()
        host = f"unix://{path}"
        previous = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = host
        try:
            yield host
        finally:
            if previous is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = previous
            stop.set()
            server.close()
            thread.join(timeout=5)
