"""How a model family wants to be called, when the request does not say: DeepSeek-R1's recommended settings.

DeepSeek's usage notes for R1 (and its distilled models): temperature 0.6, top-p 0.95, and a response that starts
with `<think>\\n` (without it the model sometimes skips its reasoning). These apply when the served checkpoint is an
R1 one; a request's own `temperature` and `top_p` always win, and `chat_template_kwargs: {"thinking": false}` leaves
the prompt as the template renders it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

R1_TEMPERATURE = 0.6
R1_TOP_P = 0.95
THINK_OPEN = "<think>\n"
THINK_CLOSE = "</think>"  # ends the reasoning; a response_format constrains what follows it

# "R1" as a word of the checkpoint's name: DeepSeek-R1, DeepSeek-R1-0528, DeepSeek-R1-Distill-Qwen-7B; not "R10".
_R1_NAME = re.compile(r"(?<![a-z0-9])r1(?![0-9])", re.IGNORECASE)


def is_r1_checkpoint(source: str | None) -> bool:
    """Whether a model source (a Hub id or a directory) names an R1 checkpoint, by its last path component."""
    if not source:
        return False  # the built-in model: its random text would all land in the reasoning
    return bool(_R1_NAME.search(source.rstrip("/").rsplit("/", 1)[-1]))


@dataclass(frozen=True)
class GenerationDefaults:
    """What a request gets for the fields it leaves out."""

    temperature: float = 1.0
    top_p: float = 1.0
    open_reasoning: bool = False  # start the response inside a <think> block


def generation_defaults(r1: bool) -> GenerationDefaults:
    return GenerationDefaults(R1_TEMPERATURE, R1_TOP_P, open_reasoning=True) if r1 else GenerationDefaults()
