"""A tensor-parallel rank other than 0: `python -m app.engine.rank`, started by the engine process (rank 0), which
writes (WorkerSpec, rank, init method, device) to its stdin, pickled. It loads its shard of the model, builds the
same BatchLoop as rank 0, and steps with it until told to stop (tensor_parallel.py)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import pickle
import signal
import sys

from app.engine.spec import WorkerSpec

logger = logging.getLogger("app.engine.rank")

PR_SET_PDEATHSIG = 1  # Linux: the signal this process gets when its parent (rank 0) dies


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the collectives' timeout still ends it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main() -> int:
    spec, rank, init_method, device = pickle.load(sys.stdin.buffer)
    assert isinstance(spec, WorkerSpec)
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when to stop, as the API process does for it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from app.engine import tensor_parallel, worker
    from app.logs import configure_logging
    from app.model.loader import load_weights

    configure_logging(spec.log_level)
    try:
        tensor_parallel.join_group(rank, spec.weights.tensor_parallel_size, init_method, device)
        weights = load_weights(spec.weights, lambda text: None)
        tensor_parallel.check_split(weights.model, spec.weights.tensor_parallel_size)
        # the smallest any rank can hold: every rank's pool has the same blocks
        budget = tensor_parallel.smallest(worker.rank_kv_budget(spec, weights))
        loop = worker.build_loop(spec, weights, lambda message: None, budget)
        tensor_parallel.follow(loop)
    except Exception:
        logger.exception(f"tensor-parallel rank {rank} failed", extra={"event": "rank_failed"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
