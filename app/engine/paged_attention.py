"""Attention over a paged KV pool, for any transformers model whose layers all use full attention.

One forward pass runs every sequence of a step at once, flattened into a single row of tokens (no padding in the
projections and MLPs): decode rows contribute one token each, prefills and prefill chunks their new tokens. Each
layer hands what it caches to `PagedCache.update` (keys and values; for DeepSeek-V3's multi-head latent attention,
the compressed latents, so the pool holds what the model itself would cache). It writes the new tokens into their
slots and returns every sequence's context, gathered from its blocks. `paged_attention` then attends each group of
sequences over its own context; sequences of similar shape share one padded attention call, so padding stays small.

The pool is one tensor per layer and cached tensor, [heads, slots, dim] with slot = block * block_size + offset.
Slot 0 (block 0, never handed out) stays zero: padded reads point there, and a zero is safe to mask (uninitialised
memory could hold NaN, which a mask does not cancel).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import AttentionInterface

ATTENTION_NAME = "deepseek_paged"
LAYOUT_KWARG = "paged_layout"

# A group's padded attention may cost this much more than its sequences alone would (query x key positions); a
# sequence that would push it further starts a new group. 1.25: the decode rows of a typical batch (similar
# lengths) stay one call, and one long sequence among short ones gets its own.
GROUP_PADDING = 1.25


@dataclass(frozen=True)
class Segment:
    """One sequence's share of a step: `length` new tokens at the end of a context of `context` tokens."""

    slots: torch.Tensor  # [context] the slot of every token of the context, new ones last
    length: int


@dataclass(frozen=True)
class _Group:
    rows: int
    queries: int  # padded queries per row
    keys: int  # padded keys per row
    key_start: int  # where the group's [rows * keys] context starts in the gathered tensor
    query_index: torch.Tensor  # [rows * queries] flat token index of each padded query
    out_index: torch.Tensor | None  # flat token index of each real query (None: every padded query is real)
    real: torch.Tensor | None  # which padded queries are real
    # (first, end) when the group's queries are the step's tokens first..end in order, none padded (one prompt, or
    # decode rows next to each other): its queries and outputs are then plain slices, not index copies
    span: tuple[int, int] | None
    mask: torch.Tensor | None  # [rows, 1, queries, keys] 0 where a query may look, -inf where it may not
    causal: bool  # no mask needed beyond is_causal


class StepLayout:
    """Where a step's new tokens go and what each of its sequences attends over; built once, used by every layer."""

    def __init__(self, segments: list[Segment], device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        starts, position = [], 0
        for segment in segments:
            starts.append(position)
            position += segment.length
        self.tokens = position
        # When set (a probe pass), each layer's attention adds heads × (query width + value width): what the step's
        # cost model needs to know of the model's attention (for MLA, the widths after the latents are expanded).
        self.widths: list[int] | None = None
        self.write_slots = torch.cat([s.slots[-s.length :] for s in segments]).to(device)
        order = sorted(range(len(segments)), key=lambda i: (segments[i].length, segments[i].slots.numel()))
        gathers: list[torch.Tensor] = []
        self.groups: list[_Group] = []
        key_start = 0
        for members in _group(order, segments):
            grouped = [segments[i] for i in members]
            group = _build_group(grouped, [starts[i] for i in members], key_start, gathers, dtype)
            key_start += group.rows * group.keys
            self.groups.append(_move(group, device))
        self.gather = torch.cat(gathers).to(device)
        self.whole = len(self.groups) == 1 and self.groups[0].span == (0, self.tokens)


def _group(order: list[int], segments: list[Segment]) -> Iterator[list[int]]:
    members: list[int] = []
    real = 0
    for index in order:
        segment = segments[index]
        cost = segment.length * segment.slots.numel()
        if members:
            queries = max(segment.length, max(segments[i].length for i in members))
            keys = max(segment.slots.numel(), max(segments[i].slots.numel() for i in members))
            if (len(members) + 1) * queries * keys > GROUP_PADDING * (real + cost):
                yield members
                members, real = [], 0
        members.append(index)
        real += cost
    if members:
        yield members


def _build_group(
    segments: list[Segment], starts: list[int], key_start: int, gathers: list[torch.Tensor], dtype: torch.dtype
) -> _Group:
    rows = len(segments)
    lengths = torch.tensor([s.length for s in segments])
    contexts = torch.tensor([s.slots.numel() for s in segments])
    queries, keys = int(lengths.max()), int(contexts.max())
    gather = torch.zeros((rows, keys), dtype=torch.long)  # slot 0: the zero pad
    for row, segment in enumerate(segments):
        gather[row, : segment.slots.numel()] = segment.slots
    gathers.append(gather.flatten())
    # Padded queries repeat their row's last real one (their output is dropped), so no query row is all masked.
    offset = torch.arange(queries).unsqueeze(0).minimum((lengths - 1).unsqueeze(1))  # [rows, queries]
    query_index = (torch.tensor(starts).unsqueeze(1) + offset).flatten()
    real = (torch.arange(queries).unsqueeze(0) < lengths.unsqueeze(1)).flatten()
    all_real = bool(real.all())
    first = int(query_index[0])
    consecutive = all_real and bool((query_index == torch.arange(first, first + query_index.numel())).all())
    uniform = bool((lengths == queries).all() and (contexts == keys).all())
    causal = uniform and queries == keys  # whole prompts of one length: plain causal attention
    mask = None
    if not (causal or (uniform and queries == 1)):  # decode rows of one length see every key: no mask either
        # Query i of a row sits at context position (context - length + i) and sees every key up to it.
        limit = (contexts - lengths).unsqueeze(1) + offset
        visible = (torch.arange(keys).view(1, 1, keys) <= limit.unsqueeze(2)).unsqueeze(1)
        # Additive, in the model's dtype: SDPA would otherwise convert a boolean mask in every layer.
        mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, float("-inf"))
    return _Group(
        rows=rows,
        queries=queries,
        keys=keys,
        key_start=key_start,
        query_index=query_index,
        out_index=None if all_real else query_index[real],
        real=None if all_real else real,
        span=(first, first + query_index.numel()) if consecutive else None,
        mask=mask,
        causal=causal,
    )


def _move(group: _Group, device: torch.device) -> _Group:
    if device.type == "cpu":
        return group
    moved = {
        name: getattr(group, name).to(device, non_blocking=True)
        for name in ("query_index", "out_index", "real", "mask")
        if getattr(group, name) is not None
    }
    return replace(group, **moved)


class KVPool:
    """The cache's memory: for each layer, one [heads, slots, dim] tensor per tensor the layer caches."""

    def __init__(self, shapes: list[list[tuple[int, int]]], slots: int, dtype: torch.dtype, device: torch.device):
        # torch.empty: on a CPU the pages are only touched (and resident) once tokens are written to them
        self.layers = [
            [torch.empty((heads, slots, dim), dtype=dtype, device=device) for heads, dim in layer] for layer in shapes
        ]
        for layer in self.layers:
            for tensor in layer:
                tensor[:, :1].zero_()


def bytes_per_token(shapes: list[list[tuple[int, int]]], dtype: torch.dtype) -> int:
    return sum(heads * dim for layer in shapes for heads, dim in layer) * dtype.itemsize


class PagedCache:
    """What the model's layers see as their cache during one step (duck-typed: they only call `update`)."""

    def __init__(self, pool: KVPool, layout: StepLayout) -> None:
        self._pool = pool
        self._layout = layout

    def update(self, first: torch.Tensor, second: torch.Tensor, layer_idx: int, **_: Any) -> tuple[torch.Tensor, ...]:
        layout = self._layout
        out = []
        for pooled, new in zip(self._pool.layers[layer_idx], (first, second), strict=True):
            pooled.index_copy_(1, layout.write_slots, new[0].to(pooled.dtype))
            out.append(pooled.index_select(1, layout.gather).unsqueeze(0))
        return tuple(out)


class ShapeProbe:
    """A cache that records what each layer caches (heads and width of each tensor), for sizing the pool."""

    def __init__(self) -> None:
        self.shapes: dict[int, list[tuple[int, int]]] = {}
        self.dtype = torch.float32

    def update(self, first: torch.Tensor, second: torch.Tensor, layer_idx: int, **_: Any) -> tuple[torch.Tensor, ...]:
        self.shapes[layer_idx] = [(int(t.shape[1]), int(t.shape[3])) for t in (first, second)]
        self.dtype = first.dtype
        return first, second


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [1, heads, tokens, dim]; key and value [1, kv_heads, gathered, dim] as PagedCache gathered them."""
    layout: StepLayout = kwargs[LAYOUT_KWARG]
    query, key, value = query[0], key[0], value[0]
    heads = query.shape[0]
    if layout.widths is not None:
        layout.widths.append(heads * (query.shape[-1] + value.shape[-1]))
    if layout.whole:  # one group, every token in order: its output is the step's
        return _attend(layout.groups[0], query, key, value, scaling).unsqueeze(0), None
    out = query.new_empty((layout.tokens, heads, value.shape[-1]))
    for group in layout.groups:
        flat = _attend(group, query, key, value, scaling)
        if group.span is not None:
            out[group.span[0] : group.span[1]] = flat
        elif group.real is None:
            out.index_copy_(0, group.query_index, flat)
        else:
            assert group.out_index is not None
            out.index_copy_(0, group.out_index, flat[group.real])
    return out.unsqueeze(0), None


def _attend(
    group: _Group, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """One group's attention: [rows * queries, heads, dim], its padded queries in row order."""
    heads, kv_heads = query.shape[0], key.shape[0]
    picked = query[:, group.span[0] : group.span[1]] if group.span else query.index_select(1, group.query_index)
    span = slice(group.key_start, group.key_start + group.rows * group.keys)
    k = key[:, span].reshape(kv_heads, group.rows, group.keys, -1).transpose(0, 1)
    v = value[:, span].reshape(kv_heads, group.rows, group.keys, -1).transpose(0, 1)
    if group.queries == 1:
        # Decode rows: the query heads that share a KV head become that head's queries, [rows, kv_heads, group,
        # dim], so one attention call needs no GQA expansion. Measured on 2 Zen 4 cores (12 rows over 1,024 keys,
        # 4 heads on 2): bf16 0.34 ms against 1.07 ms with enable_gqa, float32 alike. Not measured on a GPU (none
        # was lent), where it also spares SDPA's GQA support, which not every masked kernel has. Prefill queries
        # keep enable_gqa: folding them would need the mask repeated per head and measured no faster.
        q = picked.view(kv_heads, heads // kv_heads, group.rows, -1).permute(2, 0, 1, 3)
        if decode_by_matmul(q, k, v):
            attended = matmul_attention(q, k, v, group.mask, scaling)
        else:
            attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=group.mask, scale=scaling)
        return attended.reshape(group.rows, heads, -1)  # [rows, kv_heads, group, dim]: heads in the model's order
    q = picked.view(heads, group.rows, group.queries, -1).transpose(0, 1)
    attended = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=group.mask, is_causal=group.causal, scale=scaling, enable_gqa=heads != kv_heads
    )  # [rows, heads, queries, dim]
    return attended.transpose(1, 2).reshape(group.rows * group.queries, heads, -1)


# When decode rows on a CPU attend by two matmuls (matmul_attention) rather than SDPA, whose CPU kernel pays per
# row and head: it wins on a few rows and loses on many, and it is very slow when the values are narrower than the
# queries (MLA: 192-wide queries, 128-wide values). Measured with `python -m bench.decode_attention` on 2 Zen 4
# cores (bench/results/decode-attention-cpu-2core-zen4.txt), SDPA ÷ matmuls on one thread and on two:
# - MLA's 16 heads, 1 to 32 rows over 60 or 1,000 keys: 1.0-26x in bf16, 1.1-6.4x in float32 (two runs);
# - 16 rows or more: bf16 1.0-1.9x (4 heads of 16 on 2), 1.4-3.0x (12 heads of 128 on 2); float32 0.9-3.5x;
# - fewer rows with much work, in bf16: 12 heads of 128 on 2, 2 rows over 1,000 keys 2.3x and 1.1x. Below the work
#   threshold, SDPA stays: one such row over 1,000 keys (1.7x on one thread but 0.87x on two, the threads a real
#   model decodes with), 8 rows over 60 keys (1.6x, 0.89x).
# Not measured on other CPUs; a GPU keeps SDPA.
MATMUL_DECODE_ROWS = 16
MATMUL_DECODE_WORK = 2**21  # in bf16 or fp16: rows x query heads x keys x query width from which the matmuls win


def decode_by_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether decode rows (q [rows, kv_heads, group, dim], k and v [rows, kv_heads, keys, dim]) attend by matmuls."""
    if q.device.type != "cpu":
        return False
    if q.shape[-1] != v.shape[-1] or q.shape[0] >= MATMUL_DECODE_ROWS:
        return True
    work = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[-1]
    return q.dtype in (torch.bfloat16, torch.float16) and work >= MATMUL_DECODE_WORK


def matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """SDPA's result by two matmuls in the inputs' dtype, the scores scaled, masked and softmaxed in float32."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scaling if scaling is not None else q.shape[-1] ** -0.5)
    if mask is not None:
        scores.add_(mask)
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


AttentionInterface.register(ATTENTION_NAME, paged_attention)


@contextmanager
def paged_attention_on(model: Any) -> Iterator[None]:
    """Run the model's attention through `paged_attention` for one forward pass (the model may also serve
    `generate` with its own implementation, e.g. in tests, so the switch is not permanent)."""
    config = model.config
    previous = config._attn_implementation_internal
    config._attn_implementation_internal = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation_internal = previous
