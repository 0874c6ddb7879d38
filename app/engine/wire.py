"""Moving messages between the API process and the engine process: the records of messages.py, pickled, each
framed by its length.

Both processes hold one end of two one-way pipes. The API process reads and writes its ends on its event loop
(LoopReader, LoopWriter: non-blocking descriptors watched by the loop): no helper thread has to win the interpreter
lock from a busy event loop before a request reaches the engine or a token reaches its stream, and a full pipe
never blocks the loop (the writer keeps the rest, in order). The engine process reads and writes its ends with
plain blocking calls between steps (BlockingReader, write_all).

A frame is a 4-byte big-endian length followed by that many bytes of pickle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import select
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
READ_SIZE = 1 << 16


def frame(message: tuple[Any, ...]) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Bytes in, in whatever pieces the pipe gives; complete messages out, in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        self._buffer += data
        messages: list[tuple[Any, ...]] = []
        offset = 0
        while len(self._buffer) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer, offset)
            end = offset + _LENGTH.size + length
            if len(self._buffer) < end:
                break
            messages.append(pickle.loads(self._buffer[offset + _LENGTH.size : end]))
            offset = end
        del self._buffer[:offset]
        return messages


class BlockingReader:
    """The reading end of a pipe for a process without an event loop (the engine; the API process while loading).

    `poll(timeout)` says whether a whole message is ready, waiting up to timeout seconds (None: as long as it
    takes); part of a message never makes it wait longer. `recv()` returns the next message, waiting for it. Both
    raise EOFError once the other end has closed and nothing is left."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._decoder = FrameDecoder()
        self._ready: deque[tuple[Any, ...]] = deque()
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)

    def poll(self, timeout: float | None = 0.0) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            wait_ms = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
            if not self._poller.poll(wait_ms):
                return False
            self._read_once()
        return True

    def recv(self) -> tuple[Any, ...]:
        while not self._ready:
            self._read_once()
        return self._ready.popleft()

    def leftover(self) -> FrameDecoder:
        """Hand over what was read but not yet returned (no message may be waiting), e.g. to an event loop."""
        if self._ready:
            raise RuntimeError(f"{len(self._ready)} messages were read but not returned")
        return self._decoder

    def _read_once(self) -> None:
        data = os.read(self.fd, READ_SIZE)
        if not data:
            raise EOFError("the other process closed the pipe")
        self._ready.extend(self._decoder.feed(data))


def write_all(fd: int, message: tuple[Any, ...]) -> None:
    """Send one message from a process without an event loop, blocking while the pipe is full."""
    view = memoryview(frame(message))
    while view:
        written = os.write(fd, view)
        view = view[written:]


class LoopWriter:
    """The writing end of a pipe, on an event loop. `send` never blocks: what the pipe cannot take yet waits, in
    order, and goes out as the reader drains the pipe."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        os.set_blocking(fd, False)
        self._loop = loop
        self._fd = fd
        self._unsent = bytearray()
        self._broken = False

    @property
    def buffered(self) -> int:
        return len(self._unsent)

    def send(self, message: tuple[Any, ...]) -> None:
        if self._broken:
            return  # the reader is gone; whoever reads the other pipe hears about it
        data = frame(message)
        if self._unsent:
            self._unsent += data
            return
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            self._broken = True
            return
        if written < len(data):
            self._unsent += data[written:]
            self._loop.add_writer(self._fd, self._flush)

    def close(self) -> None:
        if self._unsent:
            self._loop.remove_writer(self._fd)
            self._unsent.clear()
        self._broken = True

    def _flush(self) -> None:
        try:
            written = os.write(self._fd, self._unsent)
        except BlockingIOError:
            return
        except OSError:
            self._broken = True
            written = len(self._unsent)
        del self._unsent[:written]
        if not self._unsent:
            self._loop.remove_writer(self._fd)


class LoopReader:
    """The reading end of a pipe, on an event loop: calls on_message for each message as it completes, and
    on_closed once when the writer has gone."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        on_message: Callable[[tuple[Any, ...]], None],
        on_closed: Callable[[], None],
        decoder: FrameDecoder | None = None,
    ) -> None:
        os.set_blocking(fd, False)
        self._loop = loop
        self._fd = fd
        self._on_message = on_message
        self._on_closed = on_closed
        self._decoder = decoder or FrameDecoder()
        self._open = True
        loop.add_reader(fd, self._on_readable)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            self._on_closed()
            return
        for message in self._decoder.feed(data):
            try:
                self._on_message(message)
            except Exception:  # one message failing must not lose the others read with it
                logger.exception("handling a message from the engine failed", extra={"event": "engine_message_failed"})
