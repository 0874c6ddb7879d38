"""The engine process's serving loop (app/engine/worker.py): when it steps, and which requests each step takes.

The batch loop is replaced by a recorder whose steps take a set time; messages come through a real pipe from a
thread that plays the HTTP process. The quiet window and cap are stretched so that scheduling noise on a busy CI
machine cannot change the outcome.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.engine import worker
from app.engine.batch_loop import StepOutput, StepStats
from app.engine.types import SamplingParams
from app.engine.wire import BlockingReader, frame, write_all

PARAMS = SamplingParams(max_tokens=1)


class RecordingLoop:
    """Takes every waiting request in one step (as a prefill does); each step lasts `step_s`. A request then stays
    in the running batch for `decode_steps` more steps (decode steps take no new requests)."""

    def __init__(self, step_s: float, decode_steps: int = 0) -> None:
        self.step_s = step_s
        self.decode_steps = decode_steps
        self.waiting_ids: list[int] = []
        self.running_ids: dict[int, int] = {}  # request id -> decode steps left
        self.steps: list[tuple[float, list[int]]] = []  # (when the step started, the requests it took)
        self.last = StepStats()
        self.calls = 0

    @property
    def idle(self) -> bool:
        return not self.waiting_ids and not self.running_ids

    @property
    def waiting(self) -> int:
        return len(self.waiting_ids)

    @property
    def running(self) -> int:
        return len(self.running_ids)

    def add(self, request_id: int, prompt: list[int], params: SamplingParams) -> None:
        self.waiting_ids.append(request_id)

    def cancel(self, request_id: int) -> None:
        if request_id in self.waiting_ids:
            self.waiting_ids.remove(request_id)
        self.running_ids.pop(request_id, None)

    def reset(self) -> list[int]:
        dropped = [*self.running_ids, *self.waiting_ids]
        self.waiting_ids, self.running_ids = [], {}
        return dropped

    def step(self) -> list[StepOutput]:
        self.calls += 1
        if self.idle:
            self.last = StepStats()
            return []
        taken, self.waiting_ids = self.waiting_ids, []
        self.steps.append((time.monotonic(), taken))
        time.sleep(self.step_s)
        rows = taken or list(self.running_ids)
        for request_id in taken:
            self.running_ids[request_id] = self.decode_steps + 1
        for request_id in rows:
            self.running_ids[request_id] -= 1
            if self.running_ids[request_id] == 0:
                del self.running_ids[request_id]
        self.last = StepStats("prefill" if taken else "decode", len(rows), self.step_s)
        return [StepOutput(request_id, 0, None) for request_id in rows]


@pytest.fixture
def pipes() -> Iterator[tuple[int, int, int, int]]:
    inbox_read, inbox_write = os.pipe()
    outbox_read, outbox_write = os.pipe()
    yield inbox_read, inbox_write, outbox_read, outbox_write
    for fd in (inbox_read, inbox_write, outbox_read, outbox_write):
        with contextlib.suppress(OSError):  # the test closed it already
            os.close(fd)


def serve(loop: RecordingLoop, pipes: tuple[int, int, int, int], feed: Any) -> list[tuple[Any, ...]]:
    """Run the serving loop while `feed(write)` plays the HTTP process; return what the engine sent back."""
    inbox_read, inbox_write, outbox_read, outbox_write = pipes
    received: list[tuple[Any, ...]] = []

    def collect() -> None:
        reader = BlockingReader(outbox_read)
        try:
            while True:
                received.append(reader.recv())
        except (EOFError, OSError):
            pass

    collector = threading.Thread(target=collect)
    collector.start()

    def http_process() -> None:
        feed(lambda message: write_all(inbox_write, message))
        os.close(inbox_write)  # the API process closing the pipe means stop

    feeder = threading.Thread(target=http_process)
    feeder.start()
    with pytest.raises(EOFError):
        worker._serve(loop, BlockingReader(inbox_read), lambda message: write_all(outbox_write, message))  # type: ignore[arg-type]
    feeder.join()
    os.close(outbox_write)
    collector.join()
    return received


def test_a_request_reaching_an_idle_engine_is_stepped_at_once(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "QUIET_S", 1.0)
    monkeypatch.setattr(worker, "GATHER_CAP_S", 5.0)
    loop = RecordingLoop(step_s=0.0)
    sent_at: list[float] = []

    def feed(write: Any) -> None:
        sent_at.append(time.monotonic())
        write(("add", 1, [1, 2], PARAMS))
        time.sleep(0.5)

    serve(loop, pipes, feed)
    (started, taken), *_ = loop.steps
    assert taken == [1]
    assert started - sent_at[0] < 0.25  # far less than the (stretched) quiet window


def test_a_burst_arriving_during_a_step_is_gathered_into_the_next_one(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "QUIET_S", 0.3)
    monkeypatch.setattr(worker, "GATHER_CAP_S", 10.0)
    loop = RecordingLoop(step_s=0.2)

    def feed(write: Any) -> None:
        write(("add", 0, [1], PARAMS))  # the first of the burst reaches an idle engine
        time.sleep(0.05)
        for request_id in range(1, 21):  # the rest trickle in for ~0.6 s, well past the first step
            write(("add", request_id, [1], PARAMS))
            time.sleep(0.03)
        time.sleep(0.6)

    received = serve(loop, pipes, feed)
    assert [taken for _, taken in loop.steps if taken] == [[0], list(range(1, 21))]
    assert [len(message[1]) for message in received] == [1, 20]  # one step message per step, a token per row


def test_gathering_stops_at_the_cap_when_requests_never_stop_coming(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "QUIET_S", 0.5)
    monkeypatch.setattr(worker, "GATHER_CAP_S", 0.3)
    loop = RecordingLoop(step_s=0.1)

    def feed(write: Any) -> None:
        for request_id in range(40):  # one every 20 ms for 0.8 s: the pipe is never quiet for 0.5 s
            write(("add", request_id, [1], PARAMS))
            time.sleep(0.02)

    serve(loop, pipes, feed)
    groups = [taken for _, taken in loop.steps if taken]
    assert [request_id for group in groups for request_id in group] == list(range(40))
    assert len(groups) >= 3  # the cap cut the stream into several steps instead of waiting for its end


def test_a_single_arrival_during_a_step_does_not_wait(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "QUIET_S", 1.0)
    monkeypatch.setattr(worker, "GATHER_CAP_S", 5.0)
    loop = RecordingLoop(step_s=0.2)

    def feed(write: Any) -> None:
        write(("add", 0, [1], PARAMS))
        time.sleep(0.05)
        write(("add", 1, [1], PARAMS))  # arrives during the first step: steady traffic, not a burst
        time.sleep(0.6)

    serve(loop, pipes, feed)
    (first_at, first), (second_at, second), *_ = loop.steps
    assert (first, second) == ([0], [1])
    assert second_at - first_at < 0.2 + 0.5  # stepped right after the first step, no quiet window


def test_the_gather_also_takes_cancellations(pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "QUIET_S", 0.3)
    monkeypatch.setattr(worker, "GATHER_CAP_S", 10.0)
    loop = RecordingLoop(step_s=0.2)

    def feed(write: Any) -> None:
        write(("add", 0, [1], PARAMS))
        time.sleep(0.05)
        for request_id in (1, 2, 3):
            write(("add", request_id, [1], PARAMS))
        time.sleep(0.25)  # the first step is over; the engine is gathering
        write(("cancel", 2))
        time.sleep(0.6)

    serve(loop, pipes, feed)
    assert [taken for _, taken in loop.steps if taken] == [[0], [1, 3]]


def test_a_cancelled_last_request_is_reported_before_the_engine_sleeps(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = RecordingLoop(step_s=0.02, decode_steps=10_000)  # generates until cancelled

    def feed(write: Any) -> None:
        write(("add", 0, [1], PARAMS))
        time.sleep(0.2)
        write(("cancel", 0))  # the client went away
        time.sleep(0.3)

    received = serve(loop, pipes, feed)
    counts = [(message[2], message[3]) for message in received]
    assert counts[0] == (0, 1)
    assert counts[-1] == (0, 0)  # the autoscaler's gauges must not stay at one running request
    assert loop.calls < 0.2 / 0.02 + 5  # and then it slept instead of stepping an empty batch for 0.3 s


def test_frames_are_what_the_engine_reads(pipes: tuple[int, int, int, int]) -> None:
    """A guard for the fixture above: the engine's reader decodes what write_all sends."""
    inbox_read, inbox_write, _, _ = pipes
    os.write(inbox_write, frame(("cancel", 9)))
    assert BlockingReader(inbox_read).recv() == ("cancel", 9)
