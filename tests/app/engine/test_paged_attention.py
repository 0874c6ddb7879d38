"""paged_attention against plain attention, sequence by sequence: whatever groups, padding, masks and head layouts
a step's mix of decode rows and prompts gets, each sequence's output is what attending over its own context gives.

The decode rows of a grouped-query model take their own path (their query heads folded onto the KV heads they
share), so the mixes below have decode rows of several context lengths beside prompts, with and without GQA."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from app.engine.paged_attention import LAYOUT_KWARG, Segment, StepLayout, paged_attention

DIM = 16


def reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None) -> torch.Tensor:
    """One sequence: query [heads, new, dim] at the end of key/value [kv_heads, context, dim]."""
    heads, new, _ = query.shape
    kv_heads, context, _ = key.shape
    visible = torch.arange(context).view(1, context) <= (context - new + torch.arange(new)).view(new, 1)
    repeat = heads // kv_heads
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(repeat, 0), value.repeat_interleave(repeat, 0), attn_mask=visible, scale=scale
    )
    return out.transpose(0, 1)  # [new, heads, dim]


@pytest.mark.parametrize("scale", [None, 0.3])  # the model's own scaling (DeepSeek's yarn mscale) or the default
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (4, 1), (2, 2)])
@pytest.mark.parametrize(
    "shapes",
    [
        [(1, 9), (1, 23), (1, 17), (1, 40)],  # decode rows of several depths: one padded, masked group
        [(1, 12), (1, 12), (1, 12)],  # decode rows of one depth: no mask at all
        [(1, 30), (7, 7), (5, 19), (1, 6)],  # decode rows beside a whole prompt and a prompt after a cached prefix
    ],
)
def test_each_sequence_gets_the_attention_over_its_own_context(
    heads: int, kv_heads: int, shapes: list[tuple[int, int]], scale: float | None
) -> None:
    generator = torch.Generator().manual_seed(0)
    slots = sum(context for _, context in shapes) + 1
    pool_k = torch.randn((kv_heads, slots, DIM), generator=generator)
    pool_v = torch.randn((kv_heads, slots, DIM), generator=generator)
    pool_k[:, 0] = pool_v[:, 0] = 0  # slot 0: the zero pad padded reads point at
    order = torch.randperm(slots - 1, generator=generator) + 1  # each sequence's slots scattered over the pool
    segments, taken = [], 0
    for new, context in shapes:
        segments.append(Segment(order[taken : taken + context], new))
        taken += context
    layout = StepLayout(segments, torch.device("cpu"))
    tokens = sum(new for new, _ in shapes)
    # [1, heads, tokens, dim] as the model hands it over: a transposed view of its [1, tokens, heads, dim] projection
    query = torch.randn((1, tokens, heads, DIM), generator=generator).transpose(1, 2)
    gathered_k = pool_k.index_select(1, layout.gather).unsqueeze(0)
    gathered_v = pool_v.index_select(1, layout.gather).unsqueeze(0)

    kwargs: dict[str, Any] = {LAYOUT_KWARG: layout}  # as the model's attention layers pass it through
    out, _ = paged_attention(torch.nn.Module(), query, gathered_k, gathered_v, None, scaling=scale, **kwargs)

    start = 0
    for segment, (new, _) in zip(segments, shapes, strict=True):
        expected = reference(
            query[0, :, start : start + new], pool_k[:, segment.slots], pool_v[:, segment.slots], scale
        )
        torch.testing.assert_close(out[0, start : start + new], expected)
        start += new
