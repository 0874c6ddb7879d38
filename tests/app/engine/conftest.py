"""Fixtures of the engine tests: the built-in model in float32 and prompts of different lengths."""

from __future__ import annotations

from typing import Any

import pytest

from tests.app.engine.loop_helpers import TEXTS


@pytest.fixture(scope="session")
def model(builtin_weights_fp32: Any) -> Any:
    return builtin_weights_fp32.model


@pytest.fixture(scope="session")
def prompts(builtin_tokenizer: Any) -> list[list[int]]:
    ids: list[list[int]] = [builtin_tokenizer.encode(text) for text in TEXTS]
    assert len({len(p) for p in ids}) >= 5  # prompts of different lengths, so rows are padded differently
    return ids
