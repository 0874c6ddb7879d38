"""Is there a Docker engine to build with? Asked before `pulumi up` builds the server image, so a machine without
one gets a single line instead of a provider error from deep inside BuildKit."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_HOST = "unix:///var/run/docker.sock"
_TIMEOUT_SECONDS = 3.0


def docker_problem(environ: dict[str, str] | None = None, home: Path | None = None) -> str | None:
    """None when the Docker engine answers its ping (or cannot be probed cheaply); otherwise why not, in words."""
    environ = dict(os.environ) if environ is None else environ
    home = Path.home() if home is None else home
    host = environ.get("DOCKER_HOST", "")
    context = environ.get("DOCKER_CONTEXT") or _current_context(home)
    if not host and context not in (None, "default"):
        return None  # a `docker context` the CLI resolves (remote engines, Desktop): trust it
    host = host or DEFAULT_HOST
    url = urlsplit(host)
    try:
        if url.scheme == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(_TIMEOUT_SECONDS)
                connection.connect(url.path)
                answer = _ping(connection)
        elif url.scheme == "tcp" and not environ.get("DOCKER_TLS_VERIFY"):
            with socket.create_connection((url.hostname or "", url.port or 2375), _TIMEOUT_SECONDS) as connection:
                answer = _ping(connection)
        else:
            return None  # ssh://, TLS or npipe engines: the provider connects itself
    except OSError as error:
        return f"no Docker engine answers at {host} ({error.strerror or error})"
    if not answer.startswith(b"HTTP/1.") or b" 200 " not in answer.split(b"\r\n", 1)[0]:
        return f"the Docker engine at {host} did not answer its ping with 200"
    return None


def _ping(connection: socket.socket) -> bytes:
    connection.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    return connection.recv(4096)


def _current_context(home: Path) -> str | None:
    try:
        config = json.loads((home / ".docker" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    context = config.get("currentContext") if isinstance(config, dict) else None
    return context if isinstance(context, str) else None
