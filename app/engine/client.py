"""The API process's side of the engine: starts the engine process, submits requests, streams their text.

Token ids arrive from the engine process once per step for every running request; here they become text
(incrementally, with stop strings) and go to each request's asyncio queue. A request whose client went away is
cancelled in the engine, freeing its batch slot at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from app.engine.text import Decoder, IncrementalText
from app.engine.types import EngineDeadError, FinishReason, QueueFullError, SamplingParams, TokenEvent
from app.engine.worker import WorkerSpec, run_worker
from app.model.loader import ModelLoadError

logger = logging.getLogger(__name__)


class EngineObserver:
    """Hooks called on the event loop; the metrics module implements them. Defaults do nothing."""

    def on_queue(self, waiting: int, running: int) -> None: ...
    def on_step(self, rows: int) -> None: ...
    def on_first_token(self, seconds: float) -> None: ...
    def on_token_gap(self, seconds: float) -> None: ...


@dataclass
class Request:
    request_id: int
    text: IncrementalText
    events: asyncio.Queue[TokenEvent] = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.perf_counter)
    last_token_at: float = 0.0
    generated: int = 0
    finished: bool = False


class EngineClient:
    def __init__(
        self,
        spec: WorkerSpec,
        tokenizer: Decoder,
        max_queue: int,
        observer: EngineObserver | None = None,
    ) -> None:
        self._spec = spec
        self._tokenizer = tokenizer
        self._capacity = spec.max_batch_size + max_queue
        self._observer = observer or EngineObserver()
        self._requests: dict[int, Request] = {}
        self._ids = itertools.count()
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._to_engine: Connection | None = None
        self._from_engine: Connection | None = None
        self.failure: str | None = None
        self.description = ""
        self.context_length = 0
        self._closing = False

    # ----- lifecycle (start runs in a loader thread; it blocks until the engine is ready) -----

    def start(self, loop: asyncio.AbstractEventLoop, progress: Callable[[str], None]) -> None:
        self._loop = loop
        context = multiprocessing.get_context("spawn")  # never fork a process that already runs threads
        engine_inbox, to_engine = context.Pipe(duplex=False)
        from_engine, engine_outbox = context.Pipe(duplex=False)
        self._process = context.Process(
            target=run_worker, args=(engine_inbox, engine_outbox, self._spec), name="engine", daemon=True
        )
        self._process.start()
        engine_inbox.close()
        engine_outbox.close()
        self._to_engine, self._from_engine = to_engine, from_engine
        while True:
            try:
                message = from_engine.recv()
            except (EOFError, OSError):
                raise ModelLoadError(
                    f"the engine process exited while loading (exit code {self._exit_code()})"
                ) from None
            if message[0] == "progress":
                progress(message[1])
            elif message[0] == "failed":
                raise ModelLoadError(message[1])
            elif message[0] == "ready":
                self.description, self.context_length = message[1], message[2]
                break
        threading.Thread(target=self._send_forever, name="engine-send", daemon=True).start()
        threading.Thread(target=self._receive_forever, name="engine-receive", daemon=True).start()

    def close(self) -> None:
        self._closing = True
        if self._process is None:
            return
        self._outbox.put(("stop",))
        self._outbox.put(None)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self.failure is None and self._process is not None and self._process.is_alive()

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def _exit_code(self) -> int | None:
        if self._process is None:
            return None
        self._process.join(timeout=1)
        return self._process.exitcode

    # ----- requests (event loop) -----

    def submit(self, prompt: list[int], params: SamplingParams, more_coming: bool = False) -> Request:
        """Queue a request, or raise QueueFullError when --max-queue requests already wait for a batch slot.

        `more_coming`: other requests are being parsed right now and will follow within milliseconds; an idle
        engine then waits briefly for them, so a burst is prefilled as one group."""
        if not self.alive:
            raise EngineDeadError(self.failure or "the engine is not running")
        if len(self._requests) >= self._capacity:
            raise QueueFullError(f"{len(self._requests)} requests are already in the engine")
        request = Request(next(self._ids), IncrementalText(self._tokenizer, params.stop))
        self._requests[request.request_id] = request
        self._outbox.put(("add", request.request_id, prompt, params, more_coming))
        return request

    async def stream(self, request: Request) -> AsyncIterator[TokenEvent]:
        """Events of one submitted request; leaving early (client gone) cancels it and frees its slot.

        Events that piled up while the consumer was busy come out merged, so a slow reader gets fewer, larger
        chunks instead of falling further behind."""
        try:
            while True:
                event = await request.events.get()
                while event.finish_reason is None and not request.events.empty():
                    later = request.events.get_nowait()
                    event = TokenEvent(
                        event.text + later.text, later.completion_tokens, later.finish_reason, later.error
                    )
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            if not request.finished:
                self._forget(request, cancel=True)

    def _forget(self, request: Request, cancel: bool) -> None:
        request.finished = True
        if self._requests.pop(request.request_id, None) is not None and cancel:
            self._outbox.put(("cancel", request.request_id))

    def _finish(self, request: Request, event: TokenEvent, cancel_in_engine: bool = False) -> None:
        request.events.put_nowait(event)
        self._forget(request, cancel=cancel_in_engine)

    def _on_step(self, outputs: list[tuple[int, int, str | None, bool]], waiting: int, running: int, rows: int) -> None:
        self._observer.on_queue(waiting, running)
        self._observer.on_step(rows)
        now = time.perf_counter()
        for request_id, token, finish, is_eos in outputs:
            request = self._requests.get(request_id)
            if request is None:
                continue  # cancelled meanwhile
            if request.last_token_at == 0.0:
                self._observer.on_first_token(now - request.arrived)
            else:
                self._observer.on_token_gap(now - request.last_token_at)
            request.last_token_at = now
            if is_eos:
                self._finish(request, TokenEvent(request.text.flush(), request.generated, FinishReason.STOP))
                continue
            request.generated += 1
            text = request.text.push(token)
            if request.text.stopped:
                self._finish(request, TokenEvent(text, request.generated, FinishReason.STOP), cancel_in_engine=True)
            elif finish is not None:
                self._finish(request, TokenEvent(text + request.text.flush(), request.generated, FinishReason(finish)))
            elif text:
                request.events.put_nowait(TokenEvent(text, request.generated))

    def _on_engine_lost(self, reason: str) -> None:
        if self.failure is None and not self._closing:
            self.failure = reason
            logger.error(reason, extra={"event": "engine_failed"})
        self.abort_all(reason)
        self._observer.on_queue(0, 0)
        self._observer.on_step(0)

    def _on_failed_requests(self, request_ids: list[int], reason: str) -> None:
        logger.error(f"generation failed: {reason}", extra={"event": "generation_failed", "requests": len(request_ids)})
        for request_id in request_ids:
            request = self._requests.get(request_id)
            if request is not None:
                self._finish(request, TokenEvent("", request.generated, FinishReason.ERROR, error=reason))

    def abort_all(self, reason: str) -> None:
        """End every request in flight with an error event (engine lost, or the drain ran out of time)."""
        for request in list(self._requests.values()):
            self._finish(request, TokenEvent("", request.generated, FinishReason.ERROR, error=reason), True)

    # ----- threads that move messages between the event loop and the pipes -----

    def _send_forever(self) -> None:
        assert self._to_engine is not None
        while (message := self._outbox.get()) is not None:
            try:
                self._to_engine.send(message)
            except (OSError, ValueError):
                return

    def _receive_forever(self) -> None:
        assert self._from_engine is not None and self._loop is not None
        while True:
            try:
                message = self._from_engine.recv()
            except (EOFError, OSError):
                reason = f"the engine process exited (exit code {self._exit_code()})"
                self._call(self._on_engine_lost, reason)
                return
            if message[0] == "step":
                self._call(self._on_step, *message[1:])
            elif message[0] == "failed_requests":
                self._call(self._on_failed_requests, *message[1:])

    def _call(self, function: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the event loop has closed: the process is exiting
            self._loop.call_soon_threadsafe(function, *args)
