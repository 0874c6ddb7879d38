"""Admission (app/api/admission.py): the length budget, refused and never clamped."""

from __future__ import annotations

import pytest

from app.api import admission
from app.api.errors import APIError


def test_an_empty_prompt_is_refused() -> None:
    with pytest.raises(APIError, match="empty"):
        admission.completion_budget(0, None, 4096, default=16, prompt_field="prompt")


def test_a_prompt_that_fills_the_context_is_refused_with_the_limit_named() -> None:
    with pytest.raises(APIError, match="--max-model-len") as raised:
        admission.completion_budget(4096, None, 4096, default=16, prompt_field="messages")
    assert raised.value.param == "messages" and raised.value.code == "context_length_exceeded"


def test_max_tokens_past_the_room_left_is_refused_not_clamped() -> None:
    with pytest.raises(APIError, match="at most 96") as raised:
        admission.completion_budget(4000, 100, 4096, default=None, prompt_field="messages")
    assert raised.value.param == "max_tokens"


def test_the_default_budget_is_what_fits() -> None:
    assert admission.completion_budget(10, None, 4096, default=16, prompt_field="prompt") == 16
    assert admission.completion_budget(4090, None, 4096, default=16, prompt_field="prompt") == 6
    assert admission.completion_budget(10, None, 4096, default=None, prompt_field="messages") == 4086
