"""Per-request sampling over one batch of logits: greedy rows in one argmax, sampled rows each with their own
generator, so a request's `seed` gives the same tokens whatever else shares the batch."""

from __future__ import annotations

import secrets

import torch

from app.engine.types import Logprobs, SamplingParams


def make_generator(params: SamplingParams) -> torch.Generator | None:
    if params.greedy:
        return None
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    # Sampling happens on a CPU copy of the sampled rows (see sample_next_tokens), so the generator lives there.
    return torch.Generator(device="cpu").manual_seed(seed)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    # Drop a token when the tokens before it already reach top_p; the most likely token always stays.
    drop = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def _argmax(logits: torch.Tensor) -> list[int]:
    if logits.device.type == "cpu":
        # numpy's argmax is vectorised; torch's CPU argmax over a 129k vocabulary is ~10x slower.
        return [int(t) for t in logits.numpy().argmax(axis=-1).tolist()]
    return [int(t) for t in torch.argmax(logits, dim=-1).tolist()]


def sample_next_tokens(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """logits: [batch, vocab] for the last position of each row. Returns one token id per row."""
    logits = logits.float()  # reductions over the vocabulary are far slower in bfloat16 on CPUs
    greedy = [i for i, p in enumerate(params) if p.greedy]
    result = [0] * len(params)
    if len(greedy) == len(params):
        return _argmax(logits)
    if greedy:
        picked = _argmax(logits[greedy])
        for row, token in zip(greedy, picked, strict=True):
            result[row] = int(token)
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    rows = logits[sampled].float().cpu()
    for position, row in enumerate(sampled):
        p = params[row]
        scores = rows[position] / p.temperature
        if p.top_p < 1.0:
            scores = _top_p_filter(scores, p.top_p)
        probabilities = torch.softmax(scores, dim=-1)
        if not bool(torch.isfinite(probabilities).all()):  # logits that were already inf or NaN
            result[row] = int(torch.argmax(torch.nan_to_num(rows[position])).item())
            continue
        result[row] = int(torch.multinomial(probabilities, 1, generator=generators[row]).item())
    return result


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: list[int]) -> list[Logprobs]:
    """logits: [rows, vocab] as the model gave them; for each row, the log probability of its chosen token and the
    `top[row]` most likely tokens with theirs (most likely first)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    widest = max(top, default=0)
    best_values, best_ids = torch.topk(logprobs, widest, dim=-1) if widest else (None, None)
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logits.device).unsqueeze(1)).squeeze(1).tolist()
    values = best_values.tolist() if best_values is not None else [[] for _ in tokens]
    ids = best_ids.tolist() if best_ids is not None else [[] for _ in tokens]
    return [
        (float(chosen[row]), tuple((int(t), float(v)) for t, v in zip(ids[row][:k], values[row][:k], strict=True)))
        for row, k in enumerate(top)
    ]
