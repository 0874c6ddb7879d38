"""The pods' startup budget follows the size of the weights (stack/config/model_sizes.py), unless the stack sets it:
a budget shorter than a download restarts the pod forever."""

from __future__ import annotations

from typing import Any

import pytest
from stack.config.kubernetes import InferenceConfig, LifecycleConfig, ModelConfig
from stack.config.model_sizes import (
    PUBLISHED_CHECKPOINTS,
    STARTUP_MAX_SECONDS,
    STARTUP_MIN_SECONDS,
    published_weights_gib,
    startup_budget_seconds,
)
from stack.testing.harness import stack_settings

NS = "deepseek-inference"


def config(**model: Any) -> InferenceConfig:
    return InferenceConfig(model=ModelConfig(**model))


def test_the_budget_grows_with_the_weights_between_its_bounds() -> None:
    assert startup_budget_seconds(None) == STARTUP_MIN_SECONDS
    assert startup_budget_seconds(3.3) == STARTUP_MIN_SECONDS  # a small model: the floor
    assert startup_budget_seconds(131.5) == 600 + 1578  # 600 s and 12 s a GiB
    assert startup_budget_seconds(625) == STARTUP_MAX_SECONDS  # the ceiling the config allows
    sizes = [startup_budget_seconds(gib) for gib in (10, 60, 100, 200, 400)]
    assert sizes == sorted(sizes)


def test_deepseeks_published_checkpoints_are_known_by_their_ids() -> None:
    r1 = published_weights_gib("deepseek-ai/DeepSeek-R1")
    distill = published_weights_gib("deepseek-ai/DeepSeek-R1-Distill-Llama-70B")
    assert r1 is not None and 620 < r1 < 630  # 671B parameters, one byte each in FP8
    assert distill is not None and 130 < distill < 133  # 70.6B in bf16
    assert published_weights_gib("someone/else") is None
    assert published_weights_gib("deepseek-ai/deepseek-r1") == r1  # the Hub resolves ids whatever their case
    assert published_weights_gib("DEEPSEEK-AI/DeepSeek-R1-Distill-Llama-70B") == distill
    assert all(identity.startswith("deepseek-ai/") for identity in PUBLISHED_CHECKPOINTS)


def test_the_stack_derives_the_budget_from_the_model_unless_it_is_set() -> None:
    assert config().startup_seconds == STARTUP_MIN_SECONDS  # the default 7B distillation, ~14 GiB
    assert config(id="deepseek-ai/DeepSeek-R1-Distill-Llama-70B").startup_seconds == 2179
    assert config(id="deepseek-ai/DeepSeek-R1").startup_seconds == STARTUP_MAX_SECONDS
    assert config(id="someone/else").startup_seconds == STARTUP_MIN_SECONDS
    assert config(id="someone/else", weights_gib=200).startup_seconds == 3000  # weightsGib names the size
    s3 = config(source="s3", s3_uri="s3://bucket/r1", weights_gib=60)
    assert s3.startup_seconds == 1320
    explicit = InferenceConfig(
        model=ModelConfig(id="deepseek-ai/DeepSeek-R1"), lifecycle=LifecycleConfig(startup_timeout_seconds=900)
    )
    assert explicit.startup_seconds == 900


def test_weights_gib_is_refused_unless_positive() -> None:
    with pytest.raises(ValueError, match=r"weights_gib|weightsGib"):
        ModelConfig(weights_gib=0)


@pytest.mark.parametrize(("stack", "expected"), [("r1-full", STARTUP_MAX_SECONDS), ("r1-distill-70b", 2179)])
def test_the_example_stacks_take_their_budget_from_their_model(stack: str, expected: int) -> None:
    inference = stack_settings(stack)[f"{NS}:inference"]
    assert "startupTimeoutSeconds" not in inference.get("lifecycle", {})
    assert InferenceConfig.model_validate(inference).startup_seconds == expected
