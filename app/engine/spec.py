"""What the API process tells the engine process to be, torch-free: the API process imports this module and
never the engine's own (worker.py and below), so torch, the model classes and their memory live in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing.connection import Connection

from app.model.source import WeightsSpec


@dataclass(frozen=True)
class KVCacheSpec:
    memory: int | None = None  # bytes; None: `fraction` of the memory free after loading
    fraction: float | None = None  # None: by device (KV_CACHE_FRACTION)
    prefix_caching: bool = True
    block_size: int = 16


@dataclass(frozen=True)
class WorkerSpec:
    weights: WeightsSpec
    max_batch_size: int
    log_level: str
    prefill_chunk_tokens: int | None = None
    kv_cache: KVCacheSpec = KVCacheSpec()


def engine_main(inbox: Connection, outbox: Connection, spec: WorkerSpec) -> None:
    """The engine process's entry point. Spawning pickles the target by name, so the API process imports only this
    module; the engine (and torch) is imported here, in the engine process."""
    from app.engine.worker import run_worker

    run_worker(inbox, outbox, spec)
