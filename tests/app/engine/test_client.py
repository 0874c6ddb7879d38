"""EngineClient's lifecycle (app/engine/client.py) against a real engine process on the built-in model: shutting
down while it loads, or between "ready" and the event loop taking its pipes, leaves no process and no open pipe.

(Serving through it — submit, stream, cancel, the engine dying — is tested end to end in tests/app/test_server*.)
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.engine.client import EngineClient
from app.engine.spec import WorkerSpec
from app.model.source import WeightsSpec


def engines() -> list[multiprocessing.process.BaseProcess]:
    return [child for child in multiprocessing.active_children() if child.name == "engine"]


def pipes_closed(client: EngineClient) -> bool:
    """Whether the API process let go of both pipe ends (white-box: multiprocessing's own descriptors for the
    process object stay open until it is collected, so counting /proc/self/fd would not tell)."""
    assert client._pipes is not None
    return all(pipe.closed for pipe in client._pipes)


@pytest.fixture
def client(builtin_dir: Path, builtin_tokenizer: Any) -> EngineClient:
    spec = WorkerSpec(WeightsSpec(str(builtin_dir), "auto", "cpu", 4096), max_batch_size=4, log_level="warning")
    return EngineClient(spec, builtin_tokenizer, max_queue=8)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def start_in_thread(client: EngineClient, loop: asyncio.AbstractEventLoop) -> tuple[threading.Thread, list[Any]]:
    """Start as the runtime does; `outcome` gets "returned" (or the exception), then "ready" if the loop ran it."""
    outcome: list[Any] = []

    def load() -> None:
        try:
            client.start(loop, lambda _: None, ready=lambda: outcome.append("ready"))
            outcome.append("returned")
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=load, name="model-loader")
    thread.start()
    return thread, outcome


def test_closing_while_the_engine_loads_stops_it_at_once(client: EngineClient, loop: asyncio.AbstractEventLoop) -> None:
    thread, outcome = start_in_thread(client, loop)
    deadline = time.monotonic() + 30
    while not engines() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engines(), "the engine process never started"
    client.close()  # it ignores SIGTERM by design; it is still importing torch or loading weights
    assert engines() == []  # gone when close() returns, not once it has finished loading
    thread.join(timeout=30)
    assert outcome == ["returned"]  # quietly: shutting down is not a load failure
    assert engines() == []
    assert pipes_closed(client)


def test_closing_before_the_engine_is_spawned_spawns_nothing(
    client: EngineClient, loop: asyncio.AbstractEventLoop
) -> None:
    client.close()
    client.start(loop, lambda _: None, ready=lambda: None)
    assert engines() == []


def test_closing_between_ready_and_the_loop_taking_the_pipes(
    client: EngineClient, loop: asyncio.AbstractEventLoop
) -> None:
    thread, outcome = start_in_thread(client, loop)
    thread.join(timeout=120)  # loaded: the hand-over to the event loop is queued, and the loop is not running yet
    assert outcome == ["returned"]
    assert client.description
    client.close()  # the lifespan's shutdown, on the loop, before the queued hand-over ran
    loop.run_until_complete(asyncio.sleep(0))  # now the hand-over runs, and must let go of the pipes
    assert outcome == ["returned"]  # and never say ready: the /v1 routes stay closed
    assert engines() == []
    assert pipes_closed(client)


def test_ready_comes_on_the_loop_after_the_hand_over_and_close_lets_the_engine_exit_cleanly(
    client: EngineClient, loop: asyncio.AbstractEventLoop
) -> None:
    thread, outcome = start_in_thread(client, loop)
    thread.join(timeout=120)
    assert outcome == ["returned"]  # the hand-over is queued on the loop, not done by the loader thread
    (engine,) = engines()
    loop.run_until_complete(asyncio.sleep(0))
    assert outcome == ["returned", "ready"]
    client.close()  # closing its inbox: the engine leaves its loop and exits by itself, not by a kill
    assert engine.exitcode == 0
    assert pipes_closed(client)
