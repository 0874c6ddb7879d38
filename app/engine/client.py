"""The API process's side of the engine: starts the engine process, submits requests, streams their text.

Token ids arrive from the engine process once per step for every running request; here they become text
(incrementally, with stop strings) and go to each request's asyncio queue. A request whose client went away is
cancelled in the engine, freeing its batch slot at the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from app.engine.messages import (
    Add,
    Cancel,
    Failed,
    FailedRequests,
    Progress,
    Ready,
    Refused,
    Step,
    StepToken,
    ToEngine,
)
from app.engine.spec import WorkerSpec, engine_main
from app.engine.text import Decoder, IncrementalText
from app.engine.types import (
    CacheConfig,
    EngineDeadError,
    FinishReason,
    KVStats,
    QueueFullError,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from app.engine.wire import BlockingReader, FrameDecoder, LoopReader, LoopWriter
from app.model.source import ModelLoadError

logger = logging.getLogger(__name__)


class EngineObserver:
    """Hooks called on the event loop; the metrics module implements them. Defaults do nothing."""

    def on_queue(self, waiting: int, running: int) -> None: ...
    def on_step(self, rows: int) -> None: ...
    def on_kv(self, stats: KVStats) -> None: ...
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
    # Log probabilities of tokens whose text is not out yet: they go with the next event
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def take_logprobs(self) -> tuple[TokenLogprob, ...]:
        taken, self.logprobs = tuple(self.logprobs), []
        return taken


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._pipes: tuple[Connection, Connection] | None = None
        self._writer: LoopWriter | None = None  # set once the event loop owns the pipes
        self._reader: LoopReader | None = None
        self.failure: str | None = None
        self.description = ""
        self.cache_config: CacheConfig | None = None  # set once the engine is ready
        self._closing = False
        self._spawning = threading.Lock()

    # ----- lifecycle -----
    # start() runs in a loader thread and owns the pipes until it hands them to the event loop (_attach); close()
    # runs on the event loop. The engine ignores SIGTERM (the API process drains first), so stopping it while it
    # loads is a kill: there is nothing to finish.

    def start(
        self, loop: asyncio.AbstractEventLoop, progress: Callable[[str], None], ready: Callable[[], None]
    ) -> None:
        """Spawn the engine and wait while it loads; returns quietly if close() is called meanwhile. Once the event
        loop has taken the pipes, `ready` is called there: from then on requests may be submitted."""
        self._loop = loop
        context = multiprocessing.get_context("spawn")  # never fork a process that already runs threads
        engine_inbox, to_engine = context.Pipe(duplex=False)
        from_engine, engine_outbox = context.Pipe(duplex=False)
        process = context.Process(
            target=engine_main, args=(engine_inbox, engine_outbox, self._spec), name="engine", daemon=True
        )
        with self._spawning:  # close() sees either no process (and none is spawned) or this one
            if not self._closing:
                process.start()
                self._process = process
        engine_inbox.close()
        engine_outbox.close()
        self._pipes = (to_engine, from_engine)  # they own the descriptors
        if self._process is None:
            self._release_pipes()
            return
        reader = BlockingReader(from_engine.fileno())
        try:
            while not self._closing:
                match reader.recv():
                    case Progress(text):
                        progress(text)
                    case Failed(reason):
                        raise ModelLoadError(reason)
                    case Ready(description, cache):
                        self.description, self.cache_config = description, cache
                        break
                    case unknown:
                        raise ModelLoadError(f"the engine sent {unknown!r} while loading")
        except (EOFError, OSError):
            if not self._closing:
                raise ModelLoadError(
                    f"the engine process exited while loading (exit code {self._exit_code()})"
                ) from None
        if not self._closing:
            try:
                loop.call_soon_threadsafe(self._attach, reader.leftover(), ready)
                return
            except RuntimeError:  # the event loop has closed: the server is exiting
                self.close()
        # close() has stopped the process (only it reaps it: two threads waiting on one child race); the pipes
        # are still this thread's to release.
        self._release_pipes()

    def _attach(self, decoder: FrameDecoder, ready: Callable[[], None]) -> None:
        """From now on the event loop moves the messages (see wire.py). Runs on the loop."""
        if self._closing:  # closed between "ready" and now: the loop owns the pipes, and nobody needs them
            self._release_pipes()
            return
        assert self._pipes is not None
        to_engine, from_engine = self._pipes
        loop = self._on_loop()
        self._writer = LoopWriter(loop, to_engine.fileno())
        self._reader = LoopReader(loop, from_engine.fileno(), self._on_message, self._on_pipe_closed, decoder)
        ready()

    def close(self) -> None:
        """Stop the engine. Runs on the event loop (or on the loader thread, once the loop has closed)."""
        with self._spawning:
            if self._closing:
                return
            self._closing = True
            process = self._process
        if process is None:
            return  # start() has not spawned it, and now will not
        if self._writer is not None and self._reader is not None:
            # Serving: closing its inbox tells the engine to exit after the step it is in.
            self._writer.close()
            self._reader.close()
            self._release_pipes()
            process.join(timeout=10)
        if process.is_alive():  # still loading (start() sees the pipe close and lets go), or stuck
            process.kill()
            process.join(timeout=5)

    def _release_pipes(self) -> None:
        for pipe in self._pipes or ():
            pipe.close()

    @property
    def alive(self) -> bool:
        return self.failure is None and self._process is not None and self._process.is_alive()

    def _exit_code(self) -> int | None:
        """The engine's exit code, waiting a moment for it to be reaped (not on the event loop)."""
        if self._process is None:
            return None
        self._process.join(timeout=1)
        return self._process.exitcode

    # ----- requests (event loop) -----

    def submit(self, prompt: list[int], params: SamplingParams) -> Request:
        """Queue a request, or raise QueueFullError when --max-queue requests already wait for a batch slot."""
        return self.submit_all(prompt, [params])[0]

    @property
    def capacity(self) -> int:
        """Requests it holds at once: a batch slot or a queue place each (--max-batch-size + --max-queue)."""
        return self._capacity

    def submit_all(self, prompt: list[int], choices: list[SamplingParams]) -> list[Request]:
        """Queue one request per choice of one prompt, all or none (QueueFullError when they do not all fit)."""
        if not self.alive:
            raise EngineDeadError(self.failure or "the engine is not running")
        if len(self._requests) + len(choices) > self._capacity:
            raise QueueFullError(f"{len(self._requests)} requests are already in the engine")
        requests = []
        for params in choices:
            request = Request(next(self._ids), IncrementalText(self._tokenizer, params.stop))
            self._requests[request.request_id] = request
            self._send(Add(request.request_id, prompt, params))
            requests.append(request)
        return requests

    def cancel(self, request: Request) -> None:
        """Stop a request that has not finished (its stream may never have been read); nothing for one that has."""
        if not request.finished:
            self._forget(request, cancel=True)

    async def stream(self, request: Request) -> AsyncGenerator[TokenEvent, None]:
        """Events of one submitted request; leaving early (client gone) cancels it and frees its slot.

        Events that piled up while the consumer was busy come out merged, so a slow reader gets fewer, larger
        chunks instead of falling further behind."""
        try:
            while True:
                event = await request.events.get()
                while event.finish_reason is None and not request.events.empty():
                    later = request.events.get_nowait()
                    event = TokenEvent(
                        event.text + later.text,
                        later.completion_tokens,
                        later.finish_reason,
                        later.error,
                        event.logprobs + later.logprobs,
                        event.pieces() + later.pieces(),
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
            self._send(Cancel(request.request_id))

    def _finish(self, request: Request, event: TokenEvent, cancel_in_engine: bool = False) -> None:
        request.events.put_nowait(event)
        self._forget(request, cancel=cancel_in_engine)

    def _on_step(self, outputs: list[StepToken], waiting: int, running: int, rows: int, kv: KVStats) -> None:
        self._observer.on_queue(waiting, running)
        self._observer.on_step(rows)
        self._observer.on_kv(kv)
        now = time.perf_counter()
        for request_id, token, finish, is_eos, logprobs in outputs:
            request = self._requests.get(request_id)
            if request is None:
                continue  # cancelled meanwhile
            if request.last_token_at == 0.0:
                self._observer.on_first_token(now - request.arrived)
            else:
                self._observer.on_token_gap(now - request.last_token_at)
            request.last_token_at = now
            if is_eos:  # not text, and not reported among the answer's tokens
                text = request.text.flush()
                event = TokenEvent(text, request.generated, FinishReason.STOP, logprobs=request.take_logprobs())
                self._finish(request, event)
                continue
            request.generated += 1
            if logprobs is not None:
                request.logprobs.append(TokenLogprob(token, *logprobs))
            text = request.text.push(token)
            if request.text.stopped:
                event = TokenEvent(text, request.generated, FinishReason.STOP, logprobs=request.take_logprobs())
                self._finish(request, event, cancel_in_engine=True)
            elif finish is not None:
                text += request.text.flush()
                event = TokenEvent(text, request.generated, FinishReason(finish), logprobs=request.take_logprobs())
                self._finish(request, event)
            elif text:
                request.events.put_nowait(TokenEvent(text, request.generated, logprobs=request.take_logprobs()))

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

    # ----- the pipes, on the event loop -----

    def _on_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _send(self, message: ToEngine) -> None:
        assert self._writer is not None, "requests are submitted only after `ready`"
        self._writer.send(message)  # after close() the writer drops it

    def _on_message(self, message: object) -> None:
        match message:
            case Step(tokens, waiting, running, rows, kv):
                self._on_step(tokens, waiting, running, rows, kv)
            case FailedRequests(request_ids, reason):
                self._on_failed_requests(request_ids, reason)
            case Refused(request_id, reason, param):
                if (request := self._requests.get(request_id)) is not None:
                    self._finish(request, TokenEvent("", 0, FinishReason.ERROR, error=reason, invalid=param))
            case unknown:
                logger.error(f"the engine sent a message this process does not know: {unknown!r}")

    def _on_pipe_closed(self) -> None:
        code = self._process.exitcode if self._process is not None else None  # no waiting on the event loop
        self._on_engine_lost("the engine process exited" + (f" (exit code {code})" if code is not None else ""))


def prepare_environment() -> None:
    """Settings the engine process inherits. Call once at startup, before any other thread runs.

    libgomp's threads spin for milliseconds after each parallel region before they sleep. After a prefill on every
    core, that spin takes the core the HTTP process needs to deliver the first tokens (measured: ~9 ms of CPU burnt
    after each large prefill, and first tokens 3-4 ms later). 20,000 spins still bridge the microseconds between
    one operator and the next. Read when the engine process loads torch; a value set by the operator is kept."""
    os.environ.setdefault("GOMP_SPINCOUNT", "20000")
