"""Start the real server (`python -m app`) as a process on a free port, for tests that call it like a user."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

MODEL = "deepseek-r1-distill-tiny"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def request_logs(self, path: str) -> list[dict[str, Any]]:
        """The server's JSON log lines for requests to `path`, oldest first."""
        lines = [json.loads(line) for line in self.logs().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == "request" and line.get("path") == path]

    def wait_for_request_logs(self, path: str, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Wait until at least `count` requests to `path` are logged (the line is written once the response has
        gone, so a client can see its answer a moment before the log does)."""
        until(lambda: len(self.request_logs(path)) >= count, timeout, f"{count} logged requests to {path}")
        return self.request_logs(path)

    def metric(self, name: str) -> float:
        """The value of a metric line `name{...} value` (first match) from /metrics."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"metric {name} not found")

    def wait_for_metric(self, name: str, value: float, timeout: float = 10) -> None:
        until(lambda: self.metric(name) == value, timeout, lambda: f"{name} == {value} (it reads {self.metric(name)})")


def until(condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    """Poll `condition` until it holds; fail naming `what` (a callable is asked at the failure, for the state then)
    after `timeout` seconds. For things a test cannot be told about, so that a slow CI machine makes it wait longer
    instead of fail."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what() if callable(what) else what} after {timeout} s")
        time.sleep(0.02)


def start(args: list[str], cache: Path, log: Path, env: dict[str, str] | None = None) -> LiveServer:
    port = free_port()
    environment = {**os.environ, "HF_HOME": str(cache), **(env or {})}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return LiveServer(process, f"http://127.0.0.1:{port}", log)


def wait_ready(server: LiveServer, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.logs()}")
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not ready after {timeout}s:\n{server.logs()}")


def stop(server: LiveServer, timeout: float = 60) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


def _children(pid: int, marker: bytes) -> list[int]:
    """The processes `pid` started whose command line holds `marker` (children are listed per thread in /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if marker in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return found


def rank_pids(engine: int) -> list[int]:
    """The tensor-parallel ranks 1..N-1 an engine process started (app.engine.rank)."""
    return _children(engine, b"app.engine.rank")


def engine_pids(server: LiveServer) -> list[int]:
    """The engine process(es) the server spawned (multiprocessing's resource tracker is left out); it is spawned
    from the model-loader thread."""
    return _children(server.process.pid, b"spawn_main")


@contextmanager
def running(args: list[str], cache: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[LiveServer]:
    server = start(args, cache, log, env)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(server)


# ----- calling it -----


def client(server: LiveServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=60)


def chat(server: LiveServer, **body: object) -> httpx.Response:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, **body}
    # json.dumps escapes non-ASCII, so even a lone surrogate travels as a valid JSON escape (\ud800).
    content = json.dumps(payload)
    headers = {"content-type": "application/json"}
    return httpx.post(f"{server.base_url}/v1/chat/completions", content=content, headers=headers, timeout=60)


# A stream that outlasts any test: it ends only when the client or the server ends it.
LONG_STREAM = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "long"}],
    "max_tokens": 3000,
    "ignore_eos": True,
    "stream": True,
}
# The same generation as one JSON response: it ends only when the client leaves.
LONG_PLAIN = {**LONG_STREAM, "stream": False}


def until_first_text(lines: Iterator[str]) -> None:
    """Read a stream's lines up to its first generated text (the request is then in the running batch)."""
    while '"content":"' not in (line := next(lines)) or '"content":""' in line:
        pass
