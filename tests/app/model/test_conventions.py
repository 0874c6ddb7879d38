"""Which checkpoints get DeepSeek-R1's recommended defaults."""

from __future__ import annotations

import pytest

from app.model.conventions import R1_TEMPERATURE, R1_TOP_P, generation_defaults, is_r1_checkpoint
from app.settings import load_settings


@pytest.mark.parametrize(
    "source",
    [
        "deepseek-ai/DeepSeek-R1",
        "deepseek-ai/DeepSeek-R1-0528",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
        "/models/deepseek-r1-distill-qwen-1.5b/",
    ],
)
def test_r1_checkpoints_are_recognised_by_name(source: str) -> None:
    assert is_r1_checkpoint(source)


@pytest.mark.parametrize(
    "source", [None, "", "deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-V3-0324", "org/model-r10", "/r1/models/v3"]
)
def test_other_models_are_not(source: str | None) -> None:
    assert not is_r1_checkpoint(source)


def test_r1_defaults() -> None:
    r1 = generation_defaults(r1=True)
    assert (r1.temperature, r1.top_p, r1.open_reasoning) == (R1_TEMPERATURE, R1_TOP_P, True) == (0.6, 0.95, True)
    plain = generation_defaults(r1=False)
    assert (plain.temperature, plain.top_p, plain.open_reasoning) == (1.0, 1.0, False)


def test_the_setting_follows_the_model_unless_set() -> None:
    assert load_settings(["--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"], {}).r1
    assert not load_settings(["--model", "deepseek-ai/DeepSeek-V3"], {}).r1
    assert not load_settings([], {}).r1  # the built-in model
    assert load_settings(["--r1-defaults", "true"], {}).r1
    assert not load_settings(["--model", "x/DeepSeek-R1"], {"R1_DEFAULTS": "false"}).r1
    assert load_settings(["--r1-defaults", "auto", "--model", "x/DeepSeek-R1"], {}).r1
