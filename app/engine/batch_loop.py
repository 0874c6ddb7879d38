"""Continuous batching over a paged KV cache, one step at a time: requests join between steps and leave the moment
they finish.

Each `step()` runs one forward pass over every scheduled sequence, flattened (paged_attention.py): a token for each
running request, the prompts admitted this step (within a token budget), and the next chunk of a prompt being
prefilled in chunks. Prompts admitted while others decode run in a pass of their own first, so a newcomer's first
token does not wait for the whole batch's step (never two such passes in a row). It returns the token each request
got. Pure and synchronous: the engine worker process drives it; tests drive it directly.

KV memory is a pool of fixed-size blocks (kv_blocks.py): a sequence holds the blocks its tokens fill, and a prompt
that starts with blocks another request computed takes them instead of recomputing them (prefix caching). A request
waits in the queue while the blocks it needs are taken, and is never failed for it. When a running sequence needs a
block and none is left, the most recently admitted sequence is preempted: it lets go of its blocks and goes back to
the head of the queue with every token it has so far, to be prefilled again (mostly from the prefix cache) and
carry on where it stopped.

Chunked prefill: a prompt that costs more than `prefill_chunk_tokens` (in tokens at no context: step_cost.py) and
arrives while other requests stream is prefilled a chunk per step beside their tokens, so they keep coming (one long
prefill would stall every stream for its whole length). Each chunk costs about the same, so chunks deep in a long
prompt, whose tokens attend over more keys, are shorter. On an idle loop a long prompt is prefilled whole (so is
the rest of one whose streams all ended): nobody is waiting on it, and one pass is the fastest way to its first
token.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from app.engine.grammar import GrammarError, Grammars, RowGrammar, mask_logits
from app.engine.kv_blocks import BlockPool, block_hash
from app.engine.paged_attention import (
    LAYOUT_KWARG,
    KVPool,
    PagedCache,
    Segment,
    ShapeProbe,
    StepLayout,
    bytes_per_token,
    paged_attention_on,
)
from app.engine.sampling import make_generator, sample_next_tokens, token_logprobs
from app.engine.step_cost import StepCost
from app.engine.types import CacheConfig, FinishReason, KVStats, Logprobs, SamplingParams

# Steps of at least this much work (FLOPs, step_cost.py) use every core on a CPU; smaller ones use one thread fewer,
# leaving a core to the HTTP process, which streams the tokens. In absolute work, not in tokens, because what pays
# for a second thread is the matrices' size: measured on 2 cores, the built-in model (2 MFLOPs a token) prefills
# 32 prompts of 28 tokens in ~25 ms on two threads against ~35 ms on one, while one such prompt (or a batch of
# decode rows) is faster on one; DeepSeek-R1-Distill-Qwen-1.5B's shape (3 GFLOPs a token, bf16 on an AMX Xeon)
# prefilled 63 tokens after a 1,440-token cached prefix in 0.64 s on one thread and 0.37 s on two, and decoded a
# step of 1 or 8 rows in 0.33 s against 0.18 s: a real model's every step is worth both cores.
PARALLEL_STEP_FLOPS = 0.5e9


def step_threads(work_flops: float, cpu_threads: tuple[int, int]) -> int:
    """Torch threads for a step of this much work: (every core, one fewer) as `cpu_threads` gives them."""
    return cpu_threads[0] if work_flops >= PARALLEL_STEP_FLOPS else cpu_threads[1]


MIN_CHUNK_TOKENS = 16  # however deep the context, a chunk makes at least this much progress

BLOCK_SIZE = 16  # tokens per KV block: vLLM's default; a sequence wastes under one block
DEFAULT_KV_CACHE_TOKENS = 65536  # when neither a token count nor a byte budget is given (tests, benchmarks)


@dataclass(frozen=True)
class StepOutput:
    """One new token for one request; `finish` is set when this is its last (an EOS token is not text)."""

    request_id: int
    token: int
    finish: FinishReason | None
    is_eos: bool = False
    logprobs: Logprobs | None = None  # when the request asked for them


@dataclass
class _Row:
    request_id: int
    tokens: list[int]  # the prompt, then every token produced so far
    params: SamplingParams
    generator: torch.Generator | None
    generated: int = 0
    computed: int = 0  # leading tokens whose keys and values are in the pool
    blocks: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # the names of its full, computed blocks, in order
    done: bool = False
    decoding: bool = False  # in the running batch (as opposed to waiting, or being prefilled in chunks)
    grammar: RowGrammar | None = None  # structured outputs: where the row is in the grammar its output must follow


@dataclass(frozen=True)
class StepStats:
    kind: str = "idle"  # prefill (new prompts admitted), chunk (a prompt chunk, no new prompt), decode or idle
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
        kv_cache_tokens: int | None = None,
        kv_cache_bytes: int | None = None,
        prefix_caching: bool = True,
        block_size: int = BLOCK_SIZE,
        grammars: Grammars | None = None,
    ) -> None:
        self._model = model
        self._grammars = grammars  # None: requests with a grammar are refused
        # Requests the last step ended with an error of their own (request id, reason): their grammar left them
        # no token. The caller tells their clients; the other rows went on.
        self.failed: list[tuple[int, str, str]] = []  # and the request field at fault
        self._device: torch.device = model.device
        self._eos = eos_token_ids
        self._max_batch = max_batch_size
        self._prefill_budget = prefill_token_budget
        self._waiting: deque[_Row] = deque()
        self._running: list[_Row] = []  # in admission order: the last is the first to be preempted
        # 0: every prompt is prefilled whole. Otherwise the row being prefilled a chunk a step.
        self._chunk_tokens = prefill_chunk_tokens
        self._chunking: _Row | None = None
        # (large prefill, other steps) torch threads on a CPU. A large prefill is compute-bound and runs while the
        # HTTP process mostly waits, so it gets every core; other steps are small, gain nothing from a second
        # thread (a lone prompt's prefill got slower), and leave a core to the HTTP process, which streams tokens.
        self._cpu_threads = cpu_threads
        shapes, dtype, self._cost = self._probe()
        # A step that admitted prompts ran them alone, ahead of the decoding rows: the next one decodes whatever
        # arrives (so a steady stream of arrivals cannot starve the running rows).
        self._decode_skipped = False
        self.kv_bytes_per_token = bytes_per_token(shapes, dtype)
        if kv_cache_tokens is None:
            kv_cache_tokens = kv_cache_bytes // self.kv_bytes_per_token if kv_cache_bytes else DEFAULT_KV_CACHE_TOKENS
        self._block_size = block_size
        num_blocks = kv_cache_tokens // block_size + 1  # and the pad block
        self._blocks = BlockPool(num_blocks, block_size, prefix_caching)
        self._pool = KVPool(shapes, num_blocks * block_size, dtype, self._device)
        self._prefix_queries = self._prefix_hits = self._preemptions = 0
        self.last = StepStats()

    @property
    def kv_cache_tokens(self) -> int:
        return self._blocks.usable_blocks * self._block_size

    @property
    def step_cost(self) -> StepCost:
        return self._cost

    @property
    def cache_config(self) -> CacheConfig:
        return CacheConfig(self._blocks.usable_blocks, self._block_size, self._blocks.prefix_caching)

    @property
    def kv(self) -> KVStats:
        return KVStats(self._blocks.usage, self._prefix_queries, self._prefix_hits, self._preemptions)

    @property
    def prefix_caching(self) -> bool:
        return self._blocks.prefix_caching

    def restart_counters(self) -> None:
        """Zero the cumulative counters and forget cached prefixes (after the warm-up, before serving)."""
        assert self.idle
        self._blocks.clear()
        self._prefix_queries = self._prefix_hits = self._preemptions = 0

    @property
    def kv_bytes_held(self) -> int:
        return self._blocks.used_blocks * self._block_size * self.kv_bytes_per_token

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests holding a batch slot: decoding, or being prefilled in chunks."""
        return len(self._running) + (self._chunking is not None)

    @property
    def structured_outputs(self) -> bool:
        """Whether requests with a grammar can run (the engine built the tokenizer's grammar index)."""
        return self._grammars is not None

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running and self._chunking is None

    def add(self, request_id: int, prompt: list[int], params: SamplingParams) -> None:
        needed = len(prompt) + params.max_tokens
        if needed > self.kv_cache_tokens:
            raise ValueError(
                f"the request needs {needed} tokens of KV cache (prompt and max_tokens), more than the whole cache "
                f"holds ({self.kv_cache_tokens}): raise --kv-cache-memory or lower --max-model-len"
            )
        self._waiting.append(
            _Row(request_id, list(prompt), params, make_generator(params), grammar=self._grammar(params))
        )

    def _grammar(self, params: SamplingParams) -> RowGrammar | None:
        if params.grammar is None:
            return None
        if self._grammars is None:
            raise GrammarError("this engine was started without structured outputs")
        if params.ignore_eos:
            # A finished grammar allows only end-of-sequence: there is nothing valid to generate past it.
            raise GrammarError("ignore_eos cannot be combined with a response format")
        return self._grammars.matcher(params.grammar)

    def reset(self) -> list[int]:
        """Drop every request (after a failed step left the pool in an unknown state); return their ids."""
        dropped = [row.request_id for row in (*self._running, *self._waiting)]
        if self._chunking is not None:
            dropped.append(self._chunking.request_id)
        self._waiting.clear()
        self._running = []
        self._chunking = None
        self._blocks.clear()
        return dropped

    def cancel(self, request_id: int) -> None:
        """Forget a request: dropped from the queue, or from the batch with its blocks released, now."""
        for row in self._waiting:
            if row.request_id == request_id:
                self._waiting.remove(row)
                return
        if self._chunking is not None and self._chunking.request_id == request_id:
            self._release(self._chunking)
            self._chunking = None
            return
        for row in self._running:
            if row.request_id == request_id:
                row.done = True
        self._drop_finished()

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        started = time.perf_counter()
        self.failed = []
        plan, kind = self._schedule()
        if not plan:
            self.last = StepStats()
            return []
        if self._cpu_threads is not None:
            work = sum(self._cost.flops(length, row.computed) for row, length in plan)
            torch.set_num_threads(step_threads(work, self._cpu_threads))
        outputs = self._forward(plan)
        self._drop_finished()
        self.last = StepStats(kind, len(plan), time.perf_counter() - started)
        return outputs

    # --- scheduling -----------------------------------------------------------------------------------------------

    def _schedule(self) -> tuple[list[tuple[_Row, int]], str]:
        """What this step computes, as (row, new tokens) pairs: a token for each running row, the next chunk of the
        chunking row, then the prompts admitted now. Preempts rows when the running ones need blocks."""
        plan: list[tuple[_Row, int]] = []
        preempted = self._preemptions
        for row in list(self._running):  # a copy: rows later in it may be preempted on the way
            if row.decoding and self._reserve(row, row.computed + 1):
                plan.append((row, 1))
        kind = "decode"
        chunking = self._chunking
        if chunking is not None:
            left = len(chunking.tokens) - chunking.computed
            tokens = min(self._chunk_at(chunking.computed), left) if self._running else left
            if self._reserve(chunking, chunking.computed + tokens, preempt=False):
                plan.append((chunking, tokens))
                kind = "chunk"
        if self._preemptions == preempted:  # blocks just ran out: admitting now would only preempt again
            whole, chunk_start = self._admit()
            if chunk_start:
                plan.append(chunk_start)
                kind = "chunk"
            if whole and plan and not self._decode_skipped:
                # New prompts run alone, ahead of the decoding rows: a joiner's first token waits for its own
                # prefill, not for the whole batch's step too. The decoding rows lose one short step, once.
                self._decode_skipped = True
                return whole, "prefill"
            if whole:
                plan.extend(whole)
                kind = "prefill"
        self._decode_skipped = False
        return plan, kind

    def _chunk_at(self, context: int) -> int:
        """The chunk of a prompt after `context` tokens: the chunk setting's worth of work (so a chunk deep in a
        long prompt, whose tokens attend over more keys, is shorter than the first)."""
        return self._cost.chunk(self._chunk_tokens, context, min(MIN_CHUNK_TOKENS, self._chunk_tokens))

    def _admit(self) -> tuple[list[tuple[_Row, int]], tuple[_Row, int] | None]:
        """The waiting requests to prefill now, in order, within the token budget and the free blocks. While others
        stream, a prompt longer than a chunk is taken aside instead, to be prefilled a chunk a step (one such prompt
        at a time; the next long one keeps its place for the slot, and shorter requests behind it go ahead).
        Returns the prompts prefilled whole, and the first chunk of a prompt taken aside."""
        admitted: list[tuple[_Row, int]] = []
        chunk_start: tuple[_Row, int] | None = None
        budget = self._prefill_budget
        for candidate in list(self._waiting):
            if self.running + len(admitted) >= self._max_batch:
                break
            cached = self._blocks.cached_prefix(candidate.tokens)
            to_compute = len(candidate.tokens) - len(cached) * self._block_size
            if to_compute > self._block_size and self._computing_now(candidate, admitted):
                # The same prompt (another of the n choices of one request) is being computed in this step: wait
                # one and take the blocks it fills, so the prompt is computed once.
                continue
            streaming = bool(self._running)
            start = len(candidate.tokens) - to_compute
            first = self._chunk_at(start) if self._chunk_tokens else 0
            if self._chunk_tokens and streaming and to_compute > first:
                if self._chunking is None and self._take(candidate, cached, first):
                    self._chunking = candidate
                    chunk_start = (candidate, first)
                continue
            if admitted and to_compute > budget:
                break  # the next step prefills it; long prompts never starve the running batch for long
            if not self._take(candidate, cached, to_compute):
                break  # first come, first served: it waits for blocks, and so does everyone behind it
            budget -= to_compute
            admitted.append((candidate, to_compute))
        return admitted, chunk_start

    def _computing_now(self, candidate: _Row, admitted: list[tuple[_Row, int]]) -> bool:
        """Whether a row admitted in this step has the candidate's tokens (the cache would give them next step)."""
        return self._blocks.prefix_caching and any(row.tokens == candidate.tokens for row, _ in admitted)

    def _take(self, row: _Row, cached: list[tuple[int, bytes]], first_tokens: int) -> bool:
        """Move a waiting row into the batch with its cached prefix and the blocks for its first `first_tokens`."""
        blocks = [block for block, _ in cached]
        start = len(blocks) * self._block_size
        needed = self._blocks.blocks_for(start + first_tokens) - len(blocks)
        if needed > self._blocks.available_besides(blocks):
            return False
        self._blocks.share(blocks)
        fresh = self._blocks.allocate(needed)
        assert fresh is not None
        row.blocks, row.hashes, row.computed = blocks + fresh, [name for _, name in cached], start
        self._prefix_queries += len(row.tokens)
        self._prefix_hits += start
        self._waiting.remove(row)
        return True

    def _reserve(self, row: _Row, tokens: int, preempt: bool = True) -> bool:
        """Blocks for the row's first `tokens` tokens, preempting later rows if need be (or the row itself, when
        it is the latest); False if the row cannot run this step."""
        needed = self._blocks.blocks_for(tokens) - len(row.blocks)
        while needed > self._blocks.available:
            if not preempt:
                return False
            victim = self._victim()
            self._preempt(victim)
            if victim is row:
                return False
        if needed > 0:
            fresh = self._blocks.allocate(needed)
            assert fresh is not None
            row.blocks.extend(fresh)
        return True

    def _victim(self) -> _Row:
        """The row to preempt: the one being prefilled in chunks, else the most recently admitted."""
        return self._chunking if self._chunking is not None else self._running[-1]

    def _preempt(self, row: _Row) -> None:
        self._release(row)
        if row is self._chunking:
            self._chunking = None
        else:
            self._running.remove(row)
            row.decoding = False
        self._waiting.appendleft(row)  # the head of the queue: its tokens so far are prefilled again, then it goes on
        self._preemptions += 1

    def _release(self, row: _Row) -> None:
        self._blocks.release(row.blocks)
        row.blocks, row.hashes, row.computed = [], [], 0

    # --- the forward pass -----------------------------------------------------------------------------------------

    def _forward(self, plan: list[tuple[_Row, int]]) -> list[StepOutput]:
        segments: list[Segment] = []
        ids: list[int] = []
        positions: list[int] = []
        sampled: list[_Row] = []
        last_index: list[int] = []
        offset = 0
        for row, length in plan:
            end = row.computed + length
            segments.append(Segment(self._slots(row, end), length))
            ids.extend(row.tokens[row.computed : end])
            positions.extend(range(row.computed, end))
            offset += length
            if end == len(row.tokens):  # its whole context is in: the logits give its next token
                sampled.append(row)
                last_index.append(offset - 1)
        layout = StepLayout(segments, self._device, self._model.dtype)
        with paged_attention_on(self._model):
            output = self._model(
                input_ids=torch.tensor([ids], dtype=torch.long, device=self._device),
                position_ids=torch.tensor([positions], dtype=torch.long, device=self._device),
                cache=PagedCache(self._pool, layout),
                use_cache=True,
                logits_to_keep=torch.tensor(last_index, dtype=torch.long, device=self._device),
                **{LAYOUT_KWARG: layout},
            )
        for row, length in plan:
            row.computed += length
            self._register_full_blocks(row)
        outputs: list[StepOutput] = []
        if sampled:
            logits = output.logits[0]
            constrained = [(i, r.grammar) for i, r in enumerate(sampled) if r.grammar is not None and r.grammar.active]
            scoring = any(sampled[i].params.logprobs is not None for i, _ in constrained)
            allowed, stuck = mask_logits(logits, constrained, keep_original=scoring) if constrained else (logits, [])
            for index in stuck:
                self._fail(sampled[index], "the grammar allows no further token: no value satisfies the schema")
            tokens = sample_next_tokens(allowed, [r.params for r in sampled], [r.generator for r in sampled])
            scored = [i for i, r in enumerate(sampled) if r.params.logprobs is not None]
            found: dict[int, Logprobs] = {}
            if scored:
                top = [sampled[i].params.logprobs or 0 for i in scored]
                picked = token_logprobs(logits[scored], [tokens[i] for i in scored], top)
                found = dict(zip(scored, picked, strict=True))
            for index, (row, token) in enumerate(zip(sampled, tokens, strict=True)):
                if row is self._chunking:
                    self._chunking = None
                if row.done:  # failed above: not in the running batch, so its blocks go back here
                    if not row.decoding:
                        self._release(row)
                    continue
                if not row.decoding:  # its prompt is in: it joins the running batch
                    row.decoding = True
                    self._running.append(row)
                accepted = self._accept(row, token, found.get(index))
                if accepted is not None:
                    outputs.append(accepted)
        return outputs

    def _slots(self, row: _Row, tokens: int) -> torch.Tensor:
        blocks = torch.tensor(row.blocks, dtype=torch.long).unsqueeze(1) * self._block_size
        return (blocks + torch.arange(self._block_size)).flatten()[:tokens]

    def _register_full_blocks(self, row: _Row) -> None:
        """Name the blocks this step filled, so later prompts that start the same way can share them."""
        size = self._block_size
        for index in range(len(row.hashes), row.computed // size):
            parent = row.hashes[-1] if row.hashes else b""
            name = block_hash(parent, row.tokens[index * size : (index + 1) * size])
            self._blocks.register(row.blocks[index], name)
            row.hashes.append(name)

    def _fail(self, row: _Row, reason: str) -> None:
        """End one row with an error of its own request (the others in the step go on)."""
        row.done = True
        field = row.params.grammar.field if row.params.grammar is not None else "messages"
        self.failed.append((row.request_id, reason, field))

    def _accept(self, row: _Row, token: int, logprobs: Logprobs | None) -> StepOutput | None:
        row.tokens.append(token)
        if row.grammar is not None and not row.grammar.accept(token):
            self._fail(row, f"token {token} is outside the grammar")
            return None
        if token in self._eos and not row.params.ignore_eos:
            row.done = True
            return StepOutput(row.request_id, token, FinishReason.STOP, is_eos=True, logprobs=logprobs)
        row.generated += 1
        if row.generated >= row.params.max_tokens:
            row.done = True
            return StepOutput(row.request_id, token, FinishReason.LENGTH, logprobs=logprobs)
        return StepOutput(row.request_id, token, None, logprobs=logprobs)

    def _drop_finished(self) -> None:
        for row in self._running:
            if row.done:
                self._release(row)
        self._running = [row for row in self._running if not row.done]

    def _probe(self) -> tuple[list[list[tuple[int, int]]], torch.dtype, StepCost]:
        """What each layer caches per token (heads and width of each tensor) and what its tokens cost to compute,
        from a one-token forward pass."""
        probe = ShapeProbe()
        layout = StepLayout([Segment(torch.tensor([1]), 1)], self._device)
        layout.widths = []
        one = torch.zeros((1, 1), dtype=torch.long, device=self._device)
        with torch.inference_mode(), paged_attention_on(self._model):
            self._model(
                input_ids=one, position_ids=one, cache=probe, use_cache=True, logits_to_keep=1, **{LAYOUT_KWARG: layout}
            )
        if not probe.shapes:
            raise TypeError(f"{type(self._model).__name__} cached nothing through its cache: it cannot be served paged")
        shapes = [probe.shapes[index] for index in sorted(probe.shapes)]
        return shapes, probe.dtype, StepCost.of(self._model, layout.widths)
