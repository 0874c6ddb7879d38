"""How long a server pod may take to start, from the size of the weights it downloads and loads.

The startup probe restarts a pod that is not ready within its budget, so a budget shorter than a download loops
forever; one much longer hides a pod that is stuck. The budget is the time a pod needs at a cautious rate:
STARTUP_SECONDS_PER_GIB covers a download of ~85 MiB/s from the Hugging Face Hub into the node's cache plus
reading the weights onto the GPUs (an estimate: no AWS account measured it), on top of STARTUP_BASE_SECONDS for
the image's own start, CUDA, the tokenizer and the warm-up. The stack's `lifecycle.startupTimeoutSeconds` overrides
it; `model.weightsGib` gives the size of a model this table does not know.
"""

from __future__ import annotations

import math

STARTUP_BASE_SECONDS = 600
STARTUP_SECONDS_PER_GIB = 12
STARTUP_MIN_SECONDS = 1200  # the budget of a small model: a slow node or registry must not restart it
STARTUP_MAX_SECONDS = 7200  # the longest the config allows (2 h): beyond it, fill the cache from S3 instead

# DeepSeek's published checkpoints: parameters (billions) and bytes a parameter as they ship (FP8 for V3 and R1,
# bf16 for the distillations).
PUBLISHED_CHECKPOINTS: dict[str, tuple[float, int]] = {
    "deepseek-ai/DeepSeek-R1": (671, 1),
    "deepseek-ai/DeepSeek-R1-0528": (671, 1),
    "deepseek-ai/DeepSeek-V3": (671, 1),
    "deepseek-ai/DeepSeek-V3-0324": (671, 1),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": (70.6, 2),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": (32.8, 2),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": (14.8, 2),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": (8.03, 2),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": (7.62, 2),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": (1.78, 2),
}


# The Hub resolves repository ids whatever their case (huggingface/huggingface_hub#2090, a maintainer: "repo ids are
# case insensitive across the Hub"), so `deepseek-ai/deepseek-r1` downloads R1's 625 GiB: it must get R1's budget,
# not the small model's, or its pods restart before the download ends.
_BY_FOLDED_ID = {identity.casefold(): size for identity, size in PUBLISHED_CHECKPOINTS.items()}


def published_weights_gib(model_id: str) -> float | None:
    """The size of a published DeepSeek checkpoint's weights in GiB, by its Hub id in any case; None for a model this
    table does not know."""
    known = _BY_FOLDED_ID.get(model_id.casefold())
    if known is None:
        return None
    billions, width = known
    return billions * 1e9 * width / 2**30


def startup_budget_seconds(weights_gib: float | None) -> int:
    """The startup budget for weights of this size (unknown: the small model's)."""
    if weights_gib is None:
        return STARTUP_MIN_SECONDS
    needed = STARTUP_BASE_SECONDS + math.ceil(weights_gib * STARTUP_SECONDS_PER_GIB)
    return min(STARTUP_MAX_SECONDS, max(STARTUP_MIN_SECONDS, needed))
