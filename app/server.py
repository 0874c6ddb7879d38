"""Run the app under uvicorn with a graceful drain.

On SIGTERM (or a first Ctrl-C): /readyz turns 503 at once and new /v1 requests get 503 — the listener stays open,
because a Kubernetes Service may still route to this pod for a few seconds — while in-flight requests and streams
run to completion for up to --drain-timeout seconds. Then the server closes and the process exits 0.
A second SIGINT exits at once.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

from app.api.app import create_app
from app.engine.client import prepare_environment
from app.runtime import Runtime
from app.settings import Settings

logger = logging.getLogger(__name__)

# After the drain timeout, streams get an error event and this long to deliver it before the server closes.
ABORT_GRACE_S = 2.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.exit_code = 0
        self._drain_deadline: float | None = None
        self._aborted = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's captured signals: re-raising SIGTERM after the drain would end the process with
        # a signal status instead of 0.
        if self._drain_deadline is not None:
            if sig == signal.SIGINT:
                self.should_exit = self.force_exit = True
            return
        self.runtime.draining = True
        self._drain_deadline = time.monotonic() + self.runtime.settings.drain_timeout
        logger.info(
            "draining",
            extra={
                "event": "drain_started",
                "signal": signal.Signals(sig).name,
                "in_flight": self.runtime.in_flight,
                "timeout_s": self.runtime.settings.drain_timeout,
            },
        )

    async def on_tick(self, counter: int) -> bool:
        if self.runtime.load_error is not None:
            self.exit_code = 1
            return True
        if self._drain_deadline is not None:
            if self.runtime.in_flight == 0:
                logger.info("drained", extra={"event": "drain_finished"})
                return True
            now = time.monotonic()
            if now >= self._drain_deadline and not self._aborted:
                logger.warning(
                    "drain timeout: ending the remaining requests with an error event",
                    extra={"event": "drain_timeout", "in_flight": self.runtime.in_flight},
                )
                self.runtime.abort_in_flight("the server shut down before this request finished (drain timeout)")
                self._aborted = True
            if now >= self._drain_deadline + ABORT_GRACE_S:
                return True  # streams that still have not ended are cut by uvicorn's shutdown
        return await super().on_tick(counter)


def serve(settings: Settings) -> int:
    prepare_environment()
    runtime = Runtime(settings)
    config = uvicorn.Config(
        create_app(runtime),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
        # Longer than the idle timeouts of the load balancers in front (60 s on ALB), so they never reuse a
        # connection the server is closing.
        timeout_keep_alive=75,
    )
    server = DrainingServer(config, runtime)
    server.run()
    return server.exit_code
