"""The engine process: owns the model and runs the batch loop, apart from the HTTP process.

A separate process, as in vLLM's V1 engine core: model steps and the HTTP event loop no longer take turns on
one interpreter lock, so request parsing and token streaming run on another core while the model computes.
Messages are small tuples over two one-way pipes:

    API → engine   ("add", id, prompt_ids, SamplingParams, more_coming) | ("cancel", id) | ("stop",)
    engine → API   ("progress", text) | ("ready", description, context_length) | ("failed", text)
                   | ("step", [(id, token, finish, is_eos), ...], waiting, running, rows)
                   | ("failed_requests", [id, ...], reason)
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from app.engine.batch_loop import BatchLoop
from app.engine.types import SamplingParams
from app.model.loader import ModelLoadError, WeightsSpec, load_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    weights: WeightsSpec
    max_batch_size: int
    log_level: str


def cpu_threads() -> tuple[int, int]:
    """Torch threads for (prefill, decode) on a CPU: every core, and every core but the HTTP process's one."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return available, max(1, available - 1)


def run_worker(inbox: Connection, outbox: Connection, spec: WorkerSpec) -> None:
    # The API process owns shutdown and drains first: a Ctrl-C or SIGTERM to the process group must not kill
    # the engine under requests that are still streaming.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from app.logs import configure_logging

    configure_logging(spec.log_level)
    try:
        weights = load_weights(spec.weights, lambda text: outbox.send(("progress", text)))
        threads = cpu_threads() if weights.model.device.type == "cpu" else None
        loop = BatchLoop(weights.model, weights.eos_token_ids, spec.max_batch_size, cpu_threads=threads)
        _warm_up(loop)
    except ModelLoadError as error:
        outbox.send(("failed", str(error)))
        return
    except Exception as error:  # torch or transformers failed in a way we did not foresee: still one line
        outbox.send(("failed", f"the model could not be loaded: {type(error).__name__}: {error}"))
        return
    gc.freeze()  # the model and libraries live as long as the process: keep the collector from walking them again
    outbox.send(("ready", weights.description, weights.context_length))
    try:
        _serve(loop, inbox, outbox)
    except (EOFError, BrokenPipeError, OSError):
        return  # the API process is gone: nothing left to serve


def _warm_up(loop: BatchLoop) -> None:
    """One short generation, so the first client does not pay for lazy initialisation."""
    loop.add(-1, [0, 1, 2, 3], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
    while not loop.idle:
        loop.step()


# When requests reach an idle engine while the HTTP process is still parsing others (it says so with each add),
# wait for them — up to this long after each arrival, and no longer than the cap — so a burst of clients is
# prefilled as one group instead of a lone request first and the rest one prefill later. A lone request is not
# delayed at all. (Measured here: during a burst of 32 the HTTP process hands over a request every ~0.3 ms, with
# gaps of over a millisecond when its threads trade the interpreter lock; all 32 arrive within ~12 ms.)
ARRIVAL_WINDOW_S = 0.003
ARRIVAL_CAP_S = 0.025


def _serve(loop: BatchLoop, inbox: Connection, outbox: Connection) -> None:
    reported = (0, 0)
    while True:
        # Block while there is nothing to do; otherwise take whatever arrived and step at once.
        was_idle = loop.idle
        timeout: float | None = None if was_idle else 0.0
        deadline = 0.0
        burst = False
        while inbox.poll(timeout):
            message = inbox.recv()
            kind = message[0]
            if kind == "add":
                more_coming = message[4]
                try:
                    loop.add(message[1], message[2], message[3])
                except Exception as error:  # e.g. a seed torch cannot take: fail that request, not the engine
                    outbox.send(("failed_requests", [message[1]], f"{type(error).__name__}: {error}"))
            elif kind == "cancel":
                loop.cancel(message[1])
            elif kind == "stop":
                return
            timeout = 0.0
            burst = burst or (was_idle and kind == "add" and more_coming)
            if burst:  # keep waiting after each arrival: a straggler's hint may say "last" too early
                now = time.monotonic()
                deadline = deadline or now + ARRIVAL_CAP_S
                timeout = max(0.0, min(ARRIVAL_WINDOW_S, deadline - now))
        try:
            outputs = loop.step()
        except Exception as error:
            # A step that raises (out of memory, a kernel error) leaves the batch in an unknown state: fail the
            # requests in it, log why, and keep serving new ones rather than taking the whole server down.
            logger.exception("engine step failed", extra={"event": "engine_step_failed"})
            outbox.send(("failed_requests", loop.reset(), f"{type(error).__name__}: {error}"))
            outputs = []
        counts = (loop.waiting, loop.running)
        if outputs or counts != reported:  # a cancelled request changes the counts without producing a token
            reported = counts
            stats = loop.last
            outbox.send(
                (
                    "step",
                    [(o.request_id, o.token, o.finish.value if o.finish else None, o.is_eos) for o in outputs],
                    loop.waiting,
                    loop.running,
                    stats.rows,
                )
            )
            if outputs and logger.isEnabledFor(logging.DEBUG):
                logger.debug(stats.kind, extra={"rows": stats.rows, "ms": round(stats.seconds * 1000, 2)})
