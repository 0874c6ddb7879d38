"""Continuous batching, one step at a time: requests join the running batch between steps and leave the moment
they finish.

Each `step()` either prefills the requests that are waiting (one left-padded group, within a token budget) and
merges them into the running batch, or decodes one token for every running request. It returns the token each
request got. Pure and synchronous: the engine worker process drives it; tests drive it directly.

Chunked prefill: a prompt longer than `prefill_chunk_tokens` that arrives while other requests stream is prefilled
a chunk per step, each step also decoding the running batch, so their tokens keep coming (one long prefill would
stall every stream for its whole length). It joins the batch when its last chunk is in. On an idle loop a long
prompt is prefilled whole (so is the rest of one whose streams all ended): nobody is waiting on it, and one pass is
the fastest way to its first token.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from app.engine.kv_batch import KVBatch
from app.engine.sampling import make_generator, sample_next_tokens
from app.engine.types import FinishReason, SamplingParams

# Prefills of at least this many tokens (all prompts of the group together) use every core on a CPU. Measured on
# 2 cores: 32 prompts of 28 tokens prefill in ~25 ms on two threads against ~35 ms on one; one such prompt is
# faster on one thread.
PARALLEL_PREFILL_TOKENS = 256


@dataclass(frozen=True)
class StepOutput:
    """One new token for one request; `finish` is set when this is its last (an EOS token is not text)."""

    request_id: int
    token: int
    finish: FinishReason | None
    is_eos: bool = False


@dataclass
class _Row:
    request_id: int
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    generated: int = 0
    next_token: int = 0
    position: int = 0  # the position id of next_token
    done: bool = False
    prefilled: int = 0  # prompt tokens already in the cache while it is prefilled in chunks


@dataclass(frozen=True)
class StepStats:
    kind: str = "idle"  # prefill, decode or idle
    rows: int = 0
    seconds: float = 0.0


class BatchLoop:
    def __init__(
        self,
        model: Any,
        eos_token_ids: set[int],
        max_batch_size: int,
        prefill_token_budget: int = 8192,
        cpu_threads: tuple[int, int] | None = None,
        prefill_chunk_tokens: int = 0,
    ) -> None:
        self._model = model
        self._device: torch.device = model.device
        self._eos = eos_token_ids
        self._pad = 0  # any id in the vocabulary: padded positions are masked out
        self._max_batch = max_batch_size
        self._prefill_budget = prefill_token_budget
        self._waiting: deque[_Row] = deque()
        self._running: list[_Row] = []
        self._batch: KVBatch | None = None
        # 0: every prompt is prefilled whole. Otherwise the row being prefilled in chunks and its own cache.
        self._chunk_tokens = prefill_chunk_tokens
        self._chunking: _Row | None = None
        self._chunk_cache: DynamicCache | None = None
        # (large prefill, other steps) torch threads on a CPU. A large prefill is compute-bound and runs while the
        # HTTP process mostly waits, so it gets every core; other steps are small, gain nothing from a second
        # thread (a lone prompt's prefill got slower), and leave a core to the HTTP process, which streams tokens.
        self._cpu_threads = cpu_threads
        self.last = StepStats()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests holding a batch slot: decoding, or being prefilled in chunks."""
        return len(self._running) + (self._chunking is not None)

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running and self._chunking is None

    def add(self, request_id: int, prompt: list[int], params: SamplingParams) -> None:
        self._waiting.append(_Row(request_id, prompt, params, make_generator(params)))

    def reset(self) -> list[int]:
        """Drop every request (after a failed step left the batch in an unknown state); return their ids."""
        dropped = [row.request_id for row in (*self._running, *self._waiting)]
        if self._chunking is not None:
            dropped.append(self._chunking.request_id)
        self._waiting.clear()
        self._running = []
        self._batch = None
        self._chunking, self._chunk_cache = None, None
        return dropped

    def cancel(self, request_id: int) -> None:
        """Forget a request: dropped from the queue now, or from the batch before the next step."""
        for row in self._waiting:
            if row.request_id == request_id:
                self._waiting.remove(row)
                return
        if self._chunking is not None and self._chunking.request_id == request_id:
            self._chunking, self._chunk_cache = None, None  # its cache goes with it
            return
        for row in self._running:
            if row.request_id == request_id:
                row.done = True
        self._drop_finished()

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        started = time.perf_counter()
        admitted = self._admit()
        if self._cpu_threads is not None:
            prefilling = sum(len(row.prompt) for row in admitted) or self._next_chunk_tokens()
            large = prefilling >= PARALLEL_PREFILL_TOKENS
            torch.set_num_threads(self._cpu_threads[0] if large else self._cpu_threads[1])
        if admitted:
            outputs = self._prefill(admitted)
            kind, rows = "prefill", len(admitted)
        elif self._chunking is not None:
            # The running rows' token first, then the next chunk (its last one merges the row into the batch).
            rows = len(self._running) + 1
            chunk = self._next_chunk_tokens()
            outputs = self._decode() if self._running else []
            outputs += self._prefill_chunk(chunk)
            kind = "chunk"
        elif self._running:
            rows = len(self._running)
            outputs = self._decode()
            kind = "decode"
        else:
            self.last = StepStats()
            return []
        self._drop_finished()
        self.last = StepStats(kind, rows, time.perf_counter() - started)
        return outputs

    def _admit(self) -> list[_Row]:
        """The waiting requests to prefill now as one group, in order, within the token budget. While others
        stream, a prompt longer than a chunk is taken aside instead, to be prefilled a chunk a step (one such prompt
        at a time; the next long one keeps its place for the slot, and shorter requests behind it go ahead)."""
        admitted: list[_Row] = []
        budget = self._prefill_budget
        for candidate in list(self._waiting):
            if self.running + len(admitted) >= self._max_batch:
                break
            if self._chunk_tokens and len(candidate.prompt) > self._chunk_tokens and self._running:
                if self._chunking is None:
                    self._waiting.remove(candidate)
                    self._chunking = candidate
                    self._chunk_cache = DynamicCache(config=self._model.config)
                continue
            if admitted and len(candidate.prompt) > budget:
                break  # the next step prefills it; long prompts never starve the running batch for long
            budget -= len(candidate.prompt)
            self._waiting.remove(candidate)
            admitted.append(candidate)
        return admitted

    def _next_chunk_tokens(self) -> int:
        """Prompt tokens the chunked prefill takes this step: a chunk, or all that is left once nobody streams."""
        if self._chunking is None:
            return 0
        left = len(self._chunking.prompt) - self._chunking.prefilled
        return min(self._chunk_tokens, left) if self._running else left

    def _prefill_chunk(self, tokens: int) -> list[StepOutput]:
        """The next `tokens` of the row being prefilled in chunks; after its last, the row joins the batch."""
        row, cache = self._chunking, self._chunk_cache
        assert row is not None and cache is not None
        start, end = row.prefilled, row.prefilled + tokens
        output = self._model(
            input_ids=torch.tensor([row.prompt[start:end]], dtype=torch.long, device=self._device),
            position_ids=torch.arange(start, end, dtype=torch.long, device=self._device).unsqueeze(0),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        row.prefilled = end
        if end < len(row.prompt):
            return []
        self._chunking, self._chunk_cache = None, None
        (token,) = sample_next_tokens(output.logits[:, -1, :], [row.params], [row.generator])
        self._join([row], KVBatch(cache, torch.ones((1, end), dtype=torch.long, device=self._device)))
        return [self._accept(row, token)]

    def _prefill(self, group: list[_Row]) -> list[StepOutput]:
        width = max(len(r.prompt) for r in group)
        ids = torch.full((len(group), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for index, row in enumerate(group):
            ids[index, width - len(row.prompt) :] = torch.tensor(row.prompt)
            mask[index, width - len(row.prompt) :] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        output = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=DynamicCache(config=self._model.config),
            use_cache=True,
            logits_to_keep=1,  # only the last position is sampled; every position's logits would dwarf the prefill
        )
        tokens = sample_next_tokens(output.logits[:, -1, :], [r.params for r in group], [r.generator for r in group])
        self._join(group, KVBatch(output.cache, mask))
        return [self._accept(row, token) for row, token in zip(group, tokens, strict=True)]

    def _join(self, group: list[_Row], joined: KVBatch) -> None:
        """Freshly prefilled rows (and their cache) join the running batch, after the rows already in it."""
        if self._batch is None or not self._running:
            self._batch = joined
        else:
            self._batch.merge(joined)
        for row in group:
            row.position = len(row.prompt)
        self._running.extend(group)

    def _decode(self) -> list[StepOutput]:
        batch = self._batch
        assert batch is not None
        ids = torch.tensor([[r.next_token] for r in self._running], dtype=torch.long, device=self._device)
        positions = torch.tensor([[r.position] for r in self._running], dtype=torch.long, device=self._device)
        output = self._model(
            input_ids=ids,
            attention_mask=batch.extend_mask(),
            position_ids=positions,
            cache=batch.cache,
            use_cache=True,
        )
        rows = self._running
        tokens = sample_next_tokens(output.logits[:, -1, :], [r.params for r in rows], [r.generator for r in rows])
        for row in rows:
            row.position += 1
        return [self._accept(row, token) for row, token in zip(rows, tokens, strict=True)]

    def _accept(self, row: _Row, token: int) -> StepOutput:
        row.next_token = token
        if token in self._eos and not row.params.ignore_eos:
            row.done = True
            return StepOutput(row.request_id, token, FinishReason.STOP, is_eos=True)
        row.generated += 1
        if row.generated >= row.params.max_tokens:
            row.done = True
            return StepOutput(row.request_id, token, FinishReason.LENGTH)
        return StepOutput(row.request_id, token, None)

    def _drop_finished(self) -> None:
        keep = [index for index, row in enumerate(self._running) if not row.done]
        if len(keep) == len(self._running):
            return
        self._running = [self._running[index] for index in keep]
        if self._batch is not None:
            if keep:
                self._batch.keep(keep)
            else:
                self._batch = None
