"""The pipe protocol between the API and engine processes (app/engine/wire.py): framing, blocking ends, loop ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.engine.messages import Add, Cancel, Progress, Step
from app.engine.types import KVStats, SamplingParams
from app.engine.wire import BlockingReader, FrameDecoder, LoopReader, LoopWriter, frame, write_all
from tests.app.aio import run

MESSAGES: list[tuple[Any, ...]] = [
    Add(7, [1, 2, 3], SamplingParams(max_tokens=4, stop=("\n",))),
    Cancel(7),
    Step(
        [(7, 42, None, False, None), (8, 1, "stop", True, (-0.5, ((1, -0.5), (3, -1.25))))],
        0,
        2,
        2,
        KVStats(0.25, 100, 64, 1),
    ),
    Progress("loading ✓"),
]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):  # the test closed it already
            os.close(fd)


def test_frames_decode_to_the_same_messages_in_order() -> None:
    decoder = FrameDecoder()
    decoded = decoder.feed(b"".join(frame(m) for m in MESSAGES))
    assert decoded == MESSAGES
    assert [type(m) for m in decoded] == [type(m) for m in MESSAGES]  # the records, not bare tuples
    assert decoder.feed(frame(MESSAGES[1])) == [MESSAGES[1]]  # nothing was left over


def test_frames_split_at_every_byte_still_decode() -> None:
    data = b"".join(frame(m) for m in MESSAGES)
    decoder = FrameDecoder()
    decoded = [message for index in range(len(data)) for message in decoder.feed(data[index : index + 1])]
    assert decoded == MESSAGES


def test_a_partial_frame_waits_for_the_rest() -> None:
    data = frame(MESSAGES[0])
    decoder = FrameDecoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.feed(data[-1:]) == [MESSAGES[0]]


def test_blocking_reader_polls_then_receives(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    reader = BlockingReader(read_fd)
    assert not reader.poll(0.0)
    for message in MESSAGES:
        write_all(write_fd, message)
    assert reader.poll(0.0)
    assert [reader.recv() for _ in MESSAGES] == MESSAGES
    assert not reader.poll(0.01)


def test_blocking_reader_waits_for_a_message_sent_in_pieces(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    data = frame(MESSAGES[2])
    os.write(write_fd, data[:3])
    timer = threading.Timer(0.05, lambda: os.write(write_fd, data[3:]))
    timer.start()
    reader = BlockingReader(read_fd)
    assert reader.poll(None)
    assert reader.recv() == MESSAGES[2]
    timer.join()


def test_blocking_reader_says_eof_when_the_writer_closes(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    write_all(write_fd, MESSAGES[1])
    os.close(write_fd)
    reader = BlockingReader(read_fd)
    assert reader.recv() == MESSAGES[1]
    with pytest.raises(EOFError):
        reader.poll(0.0)


def test_write_all_sends_a_message_larger_than_the_pipe(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    large = Add(1, list(range(200_000)), SamplingParams(max_tokens=1))  # ~1 MB pickled, a pipe holds 64 KiB
    received: list[tuple[Any, ...]] = []
    thread = threading.Thread(target=lambda: received.append(BlockingReader(read_fd).recv()))
    thread.start()
    write_all(write_fd, large)
    thread.join(timeout=10)
    assert received == [large]


def test_leftover_hands_over_a_partly_read_message(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    second = frame(MESSAGES[1])
    os.write(write_fd, frame(MESSAGES[0]) + second[:2])
    reader = BlockingReader(read_fd)
    assert reader.recv() == MESSAGES[0]
    decoder = reader.leftover()
    assert decoder.feed(second[2:]) == [MESSAGES[1]]


def test_loop_writer_never_blocks_on_a_full_pipe_and_keeps_the_order(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    batches = [Add(n, list(range(20_000)), SamplingParams(max_tokens=1)) for n in range(10)]  # ~1 MB in all

    async def scenario() -> list[tuple[Any, ...]]:
        writer = LoopWriter(asyncio.get_running_loop(), write_fd)
        for message in batches:
            writer.send(message)  # returns at once though nobody reads yet
        assert writer.buffered > 0
        reader = BlockingReader(read_fd)
        return await asyncio.to_thread(lambda: [reader.recv() for _ in batches])

    assert run(scenario()) == batches


def test_loop_reader_delivers_messages_then_reports_the_writer_gone(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe

    async def scenario() -> tuple[list[tuple[Any, ...]], bool]:
        received: list[tuple[Any, ...]] = []
        closed = asyncio.Event()
        LoopReader(asyncio.get_running_loop(), read_fd, received.append, closed.set)

        def http_side() -> None:
            for message in MESSAGES:
                write_all(write_fd, message)

        await asyncio.to_thread(http_side)
        os.close(write_fd)
        await asyncio.wait_for(closed.wait(), timeout=5)
        return received, closed.is_set()

    assert run(scenario()) == (MESSAGES, True)


def test_loop_writer_to_a_vanished_reader_drops_messages_quietly(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.close(read_fd)

    async def scenario() -> None:
        writer = LoopWriter(asyncio.get_running_loop(), write_fd)
        writer.send(MESSAGES[1])
        writer.send(MESSAGES[1])
        assert writer.buffered == 0

    run(scenario())


def test_part_of_a_message_does_not_make_poll_wait_past_its_timeout(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    data = frame(MESSAGES[0])
    os.write(write_fd, data[:5])  # the rest is still in the API process's buffer
    reader = BlockingReader(read_fd)
    started = time.monotonic()
    assert not reader.poll(0.05)
    assert time.monotonic() - started < 2.0  # the engine goes back to decoding instead of waiting for the rest
    os.write(write_fd, data[5:])
    assert reader.poll(0.0)
    assert reader.recv() == MESSAGES[0]


def test_a_failing_handler_loses_only_its_own_message(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe

    async def scenario() -> list[tuple[Any, ...]]:
        handled: list[tuple[Any, ...]] = []

        def on_message(message: tuple[Any, ...]) -> None:
            if isinstance(message, Cancel):
                raise ValueError("a bug in one handler")
            handled.append(message)

        closed = asyncio.Event()
        LoopReader(asyncio.get_running_loop(), read_fd, on_message, closed.set)
        os.write(write_fd, b"".join(frame(m) for m in MESSAGES))  # all four arrive in one read
        os.close(write_fd)
        await asyncio.wait_for(closed.wait(), timeout=5)
        return handled

    assert run(scenario()) == [m for m in MESSAGES if not isinstance(m, Cancel)]
