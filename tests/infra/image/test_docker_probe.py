"""The Docker probe: a real engine ping over a unix socket (the stand-in), and one line when none answers."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from stack.image import docker_probe
from stack.image.docker_probe import docker_problem
from stack.testing.docker_stand_in import docker_ping_stand_in


def test_an_engine_that_answers_its_ping_is_found(tmp_path: Path) -> None:
    with docker_ping_stand_in() as host:
        assert docker_problem({"DOCKER_HOST": host}, tmp_path) is None


def test_no_engine_is_one_line_naming_the_socket(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/absent.sock"
    problem = docker_problem({"DOCKER_HOST": host}, tmp_path)
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"no Docker engine answers at {host}")


def test_something_else_on_the_socket_is_not_an_engine(tmp_path: Path) -> None:
    path = tmp_path / "not-docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b"HTTP/1.1 404 Not Found\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        problem = docker_problem({"DOCKER_HOST": f"unix://{path}"}, tmp_path)
    finally:
        thread.join(timeout=5)
        server.close()
    assert problem is not None and "did not answer its ping with 200" in problem


def test_the_default_socket_is_probed_without_docker_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with docker_ping_stand_in() as host:
        monkeypatch.setattr(docker_probe, "DEFAULT_HOST", host)
        assert docker_problem({}, tmp_path) is None
    # The stand-in is gone: the same default now answers nothing, and the message names it.
    problem = docker_problem({}, tmp_path)
    assert problem is not None and problem.startswith(f"no Docker engine answers at {host}")


def test_a_selected_docker_context_is_trusted(tmp_path: Path) -> None:
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"currentContext": "remote-builder"}))
    assert docker_problem({}, tmp_path) is None
    assert docker_problem({"DOCKER_CONTEXT": "desktop-linux"}, tmp_path / "elsewhere") is None
