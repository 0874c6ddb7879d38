"""paged_attention against plain attention, sequence by sequence: whatever groups, padding, masks and head layouts
a step's mix of decode rows and prompts gets, each sequence's output is what attending over its own context gives.

Decode rows take their own path (their query heads folded onto the KV heads they share; on a CPU, many of them
attend by two matmuls), so the mixes below have decode rows of several context lengths beside prompts, with and
without GQA, in float32 and half precision."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from app.engine import paged_attention as paged_attention_module
from app.engine.paged_attention import LAYOUT_KWARG, Segment, StepLayout, decode_by_matmul, paged_attention

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
    check_each_sequence(heads, kv_heads, shapes, scale, torch.float32, DIM)


MANY_DECODE_ROWS = [(1, 40 + row % 8) for row in range(16)]  # 16 rows of several depths: one padded, masked group


@pytest.mark.parametrize(
    ("dtype", "heads", "kv_heads", "value_dim", "shapes"),
    [
        (torch.bfloat16, 4, 2, DIM, MANY_DECODE_ROWS),
        (torch.float16, 4, 2, DIM, MANY_DECODE_ROWS),
        (torch.float32, 4, 2, DIM, MANY_DECODE_ROWS),
        (torch.bfloat16, 4, 4, DIM, MANY_DECODE_ROWS),
        (torch.bfloat16, 4, 2, DIM, [(1, 12)] * 16),  # one depth: no mask
        (torch.bfloat16, 2, 2, DIM // 2, [(1, 28), (1, 30)]),  # values narrower than queries (MLA's shape)
        (torch.float32, 2, 2, DIM // 2, [(1, 28), (1, 30)]),
        (torch.bfloat16, 16, 2, DIM, [(1, 4096), (1, 4000)]),  # two rows of many heads deep in a long context
    ],
)
def test_decode_rows_on_a_cpu_that_attend_by_matmuls_get_what_sdpa_gives(
    dtype: torch.dtype,
    heads: int,
    kv_heads: int,
    value_dim: int,
    shapes: list[tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many decode rows, values narrower than queries, or a few half-precision rows deep in a context take the
    matmul path (paged_attention.decode_by_matmul): each row still gets its own attention."""
    calls = spy_on_matmul_attention(monkeypatch)
    layout = check_each_sequence(heads, kv_heads, shapes, None, dtype, value_dim)
    assert calls == [len(shapes)]  # the one group of them all went through the matmuls
    assert (layout.groups[0].mask is None) == (len({context for _, context in shapes}) == 1)


def test_a_few_float32_decode_rows_beside_prompts_keep_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_on_matmul_attention(monkeypatch)
    check_each_sequence(4, 2, [(1, 30), (7, 7), (5, 19), (1, 6)], None, torch.float32, DIM)
    assert calls == []


def spy_on_matmul_attention(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each group paged_attention hands to the matmul path, as the test's step runs."""
    calls: list[int] = []
    original = paged_attention_module.matmul_attention

    def counted(q: torch.Tensor, *rest: Any) -> torch.Tensor:
        calls.append(int(q.shape[0]))
        return original(q, *rest)

    monkeypatch.setattr(paged_attention_module, "matmul_attention", counted)
    return calls


def test_a_few_decode_rows_keep_sdpa() -> None:
    few = torch.zeros((8, 2, 2, DIM), dtype=torch.bfloat16)  # 8 rows over 60 keys
    assert not decode_by_matmul(few, few.new_zeros((8, 2, 60, DIM)), few)
    deep = torch.zeros((2, 2, 2, DIM))  # two float32 rows deep in a context: only half precision gains there
    assert not decode_by_matmul(deep, deep.new_zeros((2, 2, 4096, DIM)), deep)


def check_each_sequence(
    heads: int, kv_heads: int, shapes: list[tuple[int, int]], scale: float | None, dtype: torch.dtype, value_dim: int
) -> StepLayout:
    generator = torch.Generator().manual_seed(0)
    slots = sum(context for _, context in shapes) + 1
    pool_k = torch.randn((kv_heads, slots, DIM), generator=generator).to(dtype)
    pool_v = torch.randn((kv_heads, slots, value_dim), generator=generator).to(dtype)
    pool_k[:, 0] = pool_v[:, 0] = 0  # slot 0: the zero pad padded reads point at
    order = torch.randperm(slots - 1, generator=generator) + 1  # each sequence's slots scattered over the pool
    segments, taken = [], 0
    for new, context in shapes:
        segments.append(Segment(order[taken : taken + context], new))
        taken += context
    layout = StepLayout(segments, torch.device("cpu"), dtype)
    tokens = sum(new for new, _ in shapes)
    # [1, heads, tokens, dim] as the model hands it over: a transposed view of its [1, tokens, heads, dim] projection
    query = torch.randn((1, tokens, heads, DIM), generator=generator).to(dtype).transpose(1, 2)
    gathered_k = pool_k.index_select(1, layout.gather).unsqueeze(0)
    gathered_v = pool_v.index_select(1, layout.gather).unsqueeze(0)

    kwargs: dict[str, Any] = {LAYOUT_KWARG: layout}  # as the model's attention layers pass it through
    out, _ = paged_attention(torch.nn.Module(), query, gathered_k, gathered_v, None, scaling=scale, **kwargs)

    start = 0
    for segment, (new, _) in zip(segments, shapes, strict=True):
        expected = reference(
            query[0, :, start : start + new].float(),
            pool_k[:, segment.slots].float(),
            pool_v[:, segment.slots].float(),
            scale,
        )
        # float32 exactly as SDPA gives it; half precision within a few rounding steps of the float32 result
        tolerance = None if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out[0, start : start + new].float(), expected, atol=tolerance, rtol=tolerance)
        start += new
    return layout
