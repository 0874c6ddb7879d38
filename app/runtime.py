"""What one server process holds: the tokenizer, the engine process, and the server's lifecycle state.

States: loading → ready → draining (after SIGTERM) → stopped; or loading → failed. /healthz answers while loading
(the process is alive), /readyz only when ready, /v1 routes only when ready and not draining.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from app.engine.client import EngineClient
from app.engine.spec import KVCacheSpec, WorkerSpec
from app.metrics import Metrics
from app.model.conventions import generation_defaults
from app.model.source import ModelLoadError, WeightsSpec, load_tokenizer, resolve_source
from app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Served:
    """The tokenizer and the engine serving the model."""

    tokenizer: Any
    engine: EngineClient
    created: int


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_name = settings.model_name
        self.defaults = generation_defaults(settings.r1)
        self.metrics = Metrics(self.model_name)
        self.served: Served | None = None
        self.load_error: str | None = None
        self.draining = False
        self.in_flight = 0  # /v1 requests being served (the drain waits for 0)
        self._engine: EngineClient | None = None
        self._loader: threading.Thread | None = None
        self._closed = False

    @property
    def ready(self) -> bool:
        return self.served is not None and self.served.engine.alive and not self.draining

    @property
    def failure(self) -> str | None:
        """Why this process cannot serve any more (load failed or the engine died), else None."""
        if self.load_error:
            return self.load_error
        if self.served is not None and not self.served.engine.alive and not self._closed:
            return self.served.engine.failure or "the engine stopped"
        return None

    def start_loading(self) -> None:
        """Load in the background (called from the running event loop): /healthz answers meanwhile."""
        loop = asyncio.get_running_loop()
        self._loader = threading.Thread(target=self._load, args=(loop,), name="model-loader", daemon=True)
        self._loader.start()

    def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        def progress(message: str) -> None:
            logger.info(message, extra={"event": "model_load"})

        settings = self.settings
        try:
            directory = resolve_source(settings.model, progress)
            tokenizer = load_tokenizer(directory, progress)
            spec = WorkerSpec(
                WeightsSpec(
                    str(directory),
                    settings.dtype,
                    settings.device,
                    settings.max_model_len,
                    settings.tensor_parallel_size,
                ),
                max_batch_size=settings.max_batch_size,
                log_level=settings.log_level,
                prefill_chunk_tokens=settings.prefill_chunk_tokens,
                kv_cache=KVCacheSpec(
                    settings.kv_cache_memory,
                    settings.kv_cache_memory_fraction,
                    settings.enable_prefix_caching,
                    settings.block_size,
                ),
            )
            self._engine = EngineClient(spec, tokenizer, settings.max_queue, observer=self.metrics)
            if self._closed:  # shut down before the engine was spawned (close() may not have seen it)
                return
            self._engine.start(loop, progress, ready=lambda: self._serve(tokenizer))
        except ModelLoadError as error:
            self.load_error = str(error)
        except Exception as error:  # anything else from torch/transformers: still one clear line, then exit
            self.load_error = f"the model could not be loaded: {type(error).__name__}: {error}"
        if self.load_error is not None:
            logger.error(self.load_error, extra={"event": "model_load_failed"})

    def _serve(self, tokenizer: Any) -> None:
        """On the event loop, once the engine's pipes are the loop's (never after close()): open the /v1 routes."""
        assert self._engine is not None
        # What was allocated so far lives as long as the process: freezing it keeps the collector from walking
        # it again, which otherwise stalls a busy server for tens of milliseconds at a time.
        gc.freeze()
        self.served = Served(tokenizer, self._engine, int(time.time()))
        assert self._engine.cache_config is not None  # the engine sent it with Ready
        self.metrics.model_loaded(self._engine.cache_config)
        logger.info(f"model ready: {self._engine.description}", extra={"event": "ready", "model": self.model_name})

    def abort_in_flight(self, reason: str) -> None:
        """End every generation in flight with an error event, so its client hears why (drain ran out of time)."""
        if self.served is not None:
            self.served.engine.abort_all(reason)

    def close(self) -> None:
        self._closed = True
        if self._engine is not None:
            self._engine.close()
