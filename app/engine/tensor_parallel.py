"""Tensor parallelism inside the engine: N ranks, one per GPU (or a share of the CPU's cores), the model split across
them by transformers' own tensor-parallel plan (`tp_plan="auto"`), NCCL between GPUs and gloo on a CPU.

Rank 0 is the engine process: it talks to the HTTP process and schedules. Ranks 1..N-1 are its children
(`python -m app.engine.rank`, told what to load on their stdin), and each runs the same BatchLoop, step for step:
before every step rank 0 broadcasts what changed since the last one (requests added, cancelled, a reset), so every
rank's loop holds the same rows in the same blocks and computes its share of the same forward pass. Sampling agrees
without sending tokens: the logits after the all-reduce are the same on every rank, and rank 0 fixes every unseeded
request's seed before it is broadcast.

Failure is never a hang: rank 0 checks its followers before each step and gives up (the engine exits, /healthz turns
503) when one is gone; a follower whose rank 0 is gone fails its next collective and exits; every collective has
a timeout, and an idle rank 0 still steps every HEARTBEAT_S so that waiting is not mistaken for death.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import subprocess
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from app.engine.batch_loop import BatchLoop, StepOutput
from app.engine.types import SamplingParams

logger = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # an idle rank 0 steps (with nothing to do) this often, keeping the followers' waits short
# A rank that hears nothing for this long takes itself down. As long as a large model's load may take on one rank
# more than another (the stack's startup budget goes up to 2 h); a rank that dies is seen sooner, by rank 0 before
# each step, and by gloo and NCCL when a peer's connection closes.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


class TensorParallelError(Exception):
    """A rank is gone or a collective failed: the engine cannot go on and exits (the pod restarts)."""


def free_init_method() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def join_group(rank: int, world_size: int, init_method: str, device: str) -> None:
    """Join the ranks' process group (blocks until all N have joined)."""
    # transformers' tp_plan reads the group's size and this rank's place from these (without WORLD_SIZE it
    # quietly loads the whole model on every rank)
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank))
    if device == "cuda":
        torch.cuda.set_device(rank)
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT
    )


def broadcast(value: Any = None) -> Any:
    """Rank 0's value, on every rank (rank 0 passes it, the others receive it)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def smallest(value: int) -> int:
    """The smallest of every rank's `value`, on every rank (each passes its own)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    box = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MIN)
    return int(box.item())


def with_fixed_seed(params: SamplingParams) -> SamplingParams:
    """The request with a seed of rank 0's choosing when it has none: every rank must draw the same tokens."""
    if params.greedy or params.seed is not None:
        return params
    return dataclasses.replace(params, seed=secrets.randbits(63))


class ReplicatedLoop:
    """Rank 0's BatchLoop, whose every change reaches the other ranks' loops before the next step."""

    def __init__(self, loop: BatchLoop, followers: list[subprocess.Popen[bytes]]) -> None:
        self._loop = loop
        self._followers = followers
        self._changes: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:  # what it does not change it reads from the loop it drives
        return getattr(self._loop, name)

    def add(self, request_id: int, prompt: list[int], params: SamplingParams) -> None:
        params = with_fixed_seed(params)
        self._loop.add(request_id, prompt, params)  # a request rank 0 refuses never reaches the others
        self._changes.append(("add", request_id, prompt, params))

    def cancel(self, request_id: int) -> None:
        self._loop.cancel(request_id)
        self._changes.append(("cancel", request_id))

    def reset(self) -> list[int]:
        self._changes.append(("reset",))
        return self._loop.reset()

    def restart_counters(self) -> None:  # after the warm-up: its cached blocks go on every rank
        self._changes.append(("restart",))
        self._loop.restart_counters()

    def step(self) -> list[StepOutput]:
        gone = [str(rank) for rank, process in enumerate(self._followers, 1) if process.poll() is not None]
        if gone:
            raise TensorParallelError(f"tensor-parallel rank {', '.join(gone)} exited")
        changes, self._changes = self._changes, []
        try:
            broadcast(changes)
            return self._loop.step()
        except Exception as error:  # a collective that failed leaves the ranks out of step for good
            raise TensorParallelError(f"a tensor-parallel step failed: {type(error).__name__}: {error}") from None

    def stop(self) -> None:
        """Tell the other ranks to exit, and wait for them (killing any that do not)."""
        try:
            broadcast([("stop",)])
        except Exception as error:  # they may be gone already
            logger.warning(f"tensor-parallel ranks could not be told to stop: {error}")
        stop_ranks(self._followers)


def stop_ranks(followers: list[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    """Wait for the other ranks to exit, all within one grace period, then kill any left."""
    deadline = time.monotonic() + grace_s
    for process in followers:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def check_split(model: Any, ranks: int) -> None:
    """The loaded model is split `ranks` ways (transformers falls back to a whole copy per rank quietly)."""
    split = int(getattr(model, "tp_size", None) or 1)
    if split != ranks:
        raise RuntimeError(f"the model was loaded split {split} ways, not {ranks}: tensor parallelism is not in effect")


def follow(loop: BatchLoop) -> None:
    """A rank other than 0: apply rank 0's changes and step with it, until it says stop."""
    while True:
        for change in broadcast():
            match change:
                case ("add", request_id, prompt, params):
                    loop.add(request_id, prompt, params)
                case ("cancel", request_id):
                    loop.cancel(request_id)
                case ("reset",):
                    loop.reset()
                case ("restart",):
                    loop.restart_counters()
                case ("stop",):
                    return
        loop.step()
