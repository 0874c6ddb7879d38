"""What a step's tokens cost to compute, so that chunks of a long prompt cost about the same at any depth.

A new token costs its share of the model's matrices (about 2 FLOPs per weight it passes through) plus attention
over every key before it (about 2 FLOPs per query and key dimension, per head and layer). Their ratio, the
*break-even context*, is the context length at which a token's attention costs what its matrices cost:
- the built-in model (28 thin layers, 4 heads of 16): about 290 keys, so at 3,000 tokens of context a chunk of
  the prompt costs ten times what the same chunk cost at its start;
- DeepSeek-R1-Distill-Qwen-7B (28 heads of 128): about 32,000 keys, so chunks there are sized by their tokens alone
  until the context is very long.

Both figures come from the loaded model itself (its parameters, and the attention shapes of one probe pass), so
mixture-of-experts models count only the experts a token is routed to.
"""

from __future__ import annotations

from typing import Any


def matrix_flops_per_token(model: Any) -> float:
    """About 2 FLOPs per weight a token passes through: every matrix but the embeddings (the output head runs for
    sampled tokens only), an expert bank's matrices weighted by the share of experts a token is routed to."""
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    output = model.get_output_embeddings()
    if output is not None:
        embeddings |= {id(p) for p in output.parameters()}
    routed = getattr(model.config, "num_experts_per_tok", None)
    weights = 0.0
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if id(parameter) in embeddings or parameter.dim() < 2:
                continue  # norms and biases are small beside the matrices
            share = 1.0
            experts = getattr(module, "num_experts", None)
            if parameter.dim() == 3 and experts and routed:  # [experts, out, in]: a bank of experts
                share = min(1.0, routed / experts)
            weights += parameter.numel() * share
    return 2.0 * weights


def attention_flops_per_key(widths: list[int]) -> float:
    """Per new token and key of its context: 2 FLOPs per query-key and value dimension, for each head of each layer
    (`widths`: heads × (query width + value width) of each layer, as the probe pass saw them)."""
    return 2.0 * sum(widths)


class StepCost:
    """The cost of new tokens at a depth of context, in units of one token's matrices (so a token at no context
    costs 1)."""

    def __init__(self, break_even_context: float, flops_per_token: float) -> None:
        if break_even_context <= 0 or flops_per_token <= 0:
            raise ValueError("the break-even context and a token's FLOPs must be positive")
        self.break_even_context = break_even_context
        self.flops_per_token = flops_per_token  # one token's matrices: the unit of tokens()

    @classmethod
    def of(cls, model: Any, widths: list[int]) -> StepCost:
        per_key = attention_flops_per_key(widths)
        if per_key <= 0:
            raise ValueError("the probe pass saw no attention")
        per_token = matrix_flops_per_token(model)
        return cls(per_token / per_key, per_token)

    def flops(self, count: int, context: int) -> float:
        """About the FLOPs of `count` new tokens after `context` cached ones."""
        return self.tokens(count, context) * self.flops_per_token

    def tokens(self, count: int, context: int) -> float:
        """`count` new tokens after `context` cached ones (each attends over the context and the new tokens before
        it: on average context + count / 2 keys)."""
        return count * (1.0 + (context + count / 2) / self.break_even_context)

    def chunk(self, budget_tokens: int, context: int, minimum: int) -> int:
        """The chunk, after `context` tokens, that costs what `budget_tokens` cost at no context (at least
        `minimum`)."""
        budget = self.tokens(budget_tokens, 0)
        low, high = minimum, max(minimum, budget_tokens)
        while low < high:  # the largest count within the budget: cost grows with the count
            middle = (low + high + 1) // 2
            if self.tokens(middle, context) <= budget:
                low = middle
            else:
                high = middle - 1
        return low
