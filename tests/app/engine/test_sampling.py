"""Sampling (app/engine/sampling.py): one batch of logits, each row with its own temperature, top_p and seed."""

from __future__ import annotations

import math

import pytest
import torch

from app.engine.sampling import make_generator, sample_next_tokens, token_logprobs
from app.engine.types import SamplingParams

VOCAB = 1000

GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


def sampled(seed: int | None = None, temperature: float = 1.0, top_p: float = 1.0) -> SamplingParams:
    return SamplingParams(max_tokens=16, temperature=temperature, top_p=top_p, seed=seed)


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((rows, VOCAB), generator=torch.Generator().manual_seed(seed)) * 3


def draw(logits: torch.Tensor, params: list[SamplingParams], steps: int) -> list[list[int]]:
    """Sample `steps` times from the same logits, as a request does over `steps` decode steps; rows are requests."""
    generators = [make_generator(p) for p in params]
    tokens = [sample_next_tokens(logits, params, generators) for _ in range(steps)]
    return [list(column) for column in zip(*tokens, strict=True)]


def test_greedy_rows_get_the_argmax() -> None:
    logits = random_logits(6)

    tokens = sample_next_tokens(logits, [GREEDY] * 6, [None] * 6)

    assert tokens == logits.argmax(dim=-1).tolist()


def test_greedy_works_on_bfloat16_logits() -> None:
    logits = random_logits(3).to(torch.bfloat16)

    tokens = sample_next_tokens(logits, [GREEDY] * 3, [None] * 3)

    assert tokens == logits.float().argmax(dim=-1).tolist()


def test_greedy_requests_need_no_generator() -> None:
    assert make_generator(GREEDY) is None
    assert make_generator(sampled(seed=1)) is not None


def test_the_same_seed_gives_the_same_tokens() -> None:
    logits = torch.zeros((1, VOCAB))  # uniform: every draw depends on the generator only

    first = draw(logits, [sampled(seed=1234)], steps=20)
    second = draw(logits, [sampled(seed=1234)], steps=20)

    assert first == second


def test_different_seeds_give_different_tokens() -> None:
    logits = torch.zeros((1, VOCAB))

    assert draw(logits, [sampled(seed=1)], steps=20) != draw(logits, [sampled(seed=2)], steps=20)


def test_without_a_seed_requests_differ() -> None:
    logits = torch.zeros((1, VOCAB))

    assert draw(logits, [sampled()], steps=20) != draw(logits, [sampled()], steps=20)


def test_a_seeded_row_gives_the_same_tokens_whatever_shares_its_batch() -> None:
    alone = draw(random_logits(1, seed=5), [sampled(seed=99)], steps=20)[0]
    row = random_logits(1, seed=5)[0]
    neighbours = random_logits(3, seed=6)
    logits = torch.stack([neighbours[0], row, neighbours[1], neighbours[2]])

    batch = draw(logits, [sampled(seed=7), sampled(seed=99), GREEDY, sampled()], steps=20)

    assert batch[1] == alone


def test_tiny_top_p_keeps_only_the_most_likely_token() -> None:
    logits = random_logits(1, seed=3) / 3  # a flat distribution: without top_p, draws would scatter
    best = int(logits.argmax())

    tokens = draw(logits, [sampled(seed=11, top_p=1e-6)], steps=50)[0]

    assert tokens == [best] * 50


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probabilities = torch.tensor([[0.4, 0.3, 0.2, 0.1]])  # 0.4 < 0.5, 0.4 + 0.3 >= 0.5: keep tokens 0 and 1

    tokens = draw(probabilities.log(), [sampled(seed=5, top_p=0.5)], steps=300)[0]

    assert set(tokens) == {0, 1}


def test_full_top_p_can_draw_every_token() -> None:
    probabilities = torch.tensor([[0.4, 0.3, 0.2, 0.1]])

    tokens = draw(probabilities.log(), [sampled(seed=5, top_p=1.0)], steps=300)[0]

    assert set(tokens) == {0, 1, 2, 3}


def test_temperature_is_applied_per_row_in_a_mixed_batch() -> None:
    # Every row sees the same logits: a clear favourite (token 7) and 999 others.
    row = torch.zeros(VOCAB)
    row[7] = 5.0
    logits = row.repeat(4, 1)
    params = [GREEDY, sampled(seed=1, temperature=0.1), GREEDY, sampled(seed=2, temperature=2.0)]

    rows = draw(logits, params, steps=40)

    assert rows[0] == [7] * 40  # greedy
    assert rows[1] == [7] * 40  # e^(5/0.1) outweighs the rest: as good as greedy
    assert rows[2] == [7] * 40
    # At temperature 2 the favourite has e^2.5 / (e^2.5 + 999) ~ 1% of the mass: draws scatter.
    assert sum(token != 7 for token in rows[3]) > 30


def test_each_row_samples_from_its_own_logits() -> None:
    logits = torch.full((3, VOCAB), -20.0)
    logits[0, 3] = logits[1, 500] = logits[2, 999] = 20.0
    params = [sampled(seed=1), GREEDY, sampled(seed=2, temperature=0.5)]

    rows = draw(logits, params, steps=10)

    assert rows == [[3] * 10, [500] * 10, [999] * 10]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.5])
def test_sampled_frequencies_follow_the_tempered_distribution(temperature: float) -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    expected = torch.softmax(logits[0] / temperature, dim=-1)

    tokens = draw(logits, [sampled(seed=3, temperature=temperature)], steps=4000)[0]

    observed = torch.bincount(torch.tensor(tokens), minlength=3).float() / len(tokens)
    assert torch.allclose(observed, expected, atol=0.03), (observed, expected)


def test_token_logprobs_are_the_models_own_log_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    expected = torch.log_softmax(logits, dim=-1)
    tokens = [4, 17, 49]
    scored = token_logprobs(logits, tokens, [5, 0, 2])
    for row, (chosen, top) in enumerate(scored):
        assert chosen == pytest.approx(float(expected[row, tokens[row]]), abs=1e-6)
        best = torch.topk(expected[row], len(top))
        assert [t for t, _ in top] == best.indices.tolist()
        assert [v for _, v in top] == pytest.approx(best.values.tolist(), abs=1e-6)
    assert [len(top) for _, top in scored] == [5, 0, 2]
    chosen_only, no_alternatives = token_logprobs(logits, tokens, [0, 0, 0])[1]
    assert chosen_only == pytest.approx(float(expected[1, 17]), abs=1e-6) and no_alternatives == ()


def test_token_logprobs_of_bfloat16_logits_are_computed_in_float32() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5]], dtype=torch.bfloat16)
    chosen, top = token_logprobs(logits, [0], [3])[0]
    assert chosen == pytest.approx(float(torch.log_softmax(logits.float(), -1)[0, 0]), abs=1e-6)
    assert sum(math.exp(v) for _, v in top) == pytest.approx(1.0, abs=1e-5)
