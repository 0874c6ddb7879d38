"""The built-in model (app/model/builtin.py, chat_template.py) and where models come from (app/model/loader.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from app.api.reasoning import prompt_opens_reasoning
from app.model import hardware
from app.model.builtin import (
    BUILTIN_MODEL_NAME,
    TINY_CONFIG,
    builtin_fingerprint,
    ensure_builtin_model,
)
from app.model.loader import load_weights
from app.model.source import ModelLoadError, WeightsSpec, load_tokenizer, resolve_source

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"


def render(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """The prompt text, rendered as the chat route renders it."""
    text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return text


def ignore(_: str) -> None:
    pass


# --- the checkpoint ----------------------------------------------------------------------------------------------


def test_every_build_is_byte_identical(builtin_dir: Path, tmp_path: Path) -> None:
    again = ensure_builtin_model(tmp_path)

    assert again.name == builtin_dir.name
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (again / name).read_bytes() == (builtin_dir / name).read_bytes(), name


def test_a_cached_build_is_reused_not_rebuilt(builtin_cache: Path, builtin_dir: Path) -> None:
    written = (builtin_dir / "model.safetensors").stat().st_mtime_ns

    assert ensure_builtin_model(builtin_cache) == builtin_dir
    assert (builtin_dir / "model.safetensors").stat().st_mtime_ns == written
    assert [p.name for p in builtin_cache.iterdir()] == [builtin_dir.name]  # no staging directory left behind


def test_the_cache_directory_is_named_by_a_fingerprint_of_what_was_built(
    builtin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = builtin_fingerprint()
    assert builtin_dir.name == f"{BUILTIN_MODEL_NAME}-{before}"

    monkeypatch.setitem(TINY_CONFIG, "hidden_size", 128)

    assert builtin_fingerprint() != before


def test_it_loads_with_deepseek_r1_distill_qwen_shapes_in_the_dtype_the_cpu_runs_best(builtin_weights: Any) -> None:
    model = builtin_weights.model
    config = model.config

    assert config.model_type == "qwen2"
    assert (config.num_hidden_layers, config.vocab_size) == (28, 129280)
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    # The checkpoint is bfloat16, as DeepSeek's are; `auto` keeps it where the CPU runs bf16 in hardware.
    assert TINY_CONFIG["dtype"] == "bfloat16"
    native = hardware.cpu_has_native_bf16()
    assert next(model.parameters()).dtype == (torch.bfloat16 if native else torch.float32)
    assert model.config._attn_implementation == "sdpa"
    assert builtin_weights.eos_token_ids == {1}
    assert builtin_weights.context_length == 32768


def test_a_max_model_len_beyond_the_context_is_refused(builtin_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"--max-model-len 40000 \(MAX_MODEL_LEN\) exceeds .* 32768"):
        load_weights(WeightsSpec(str(builtin_dir), "auto", "cpu", 40000), ignore)


def test_the_tokenizer_is_deepseeks(builtin_tokenizer: Any) -> None:
    assert len(builtin_tokenizer) == 129280
    assert (builtin_tokenizer.bos_token, builtin_tokenizer.eos_token) == (BOS, EOS)
    assert builtin_tokenizer.convert_tokens_to_ids([BOS, EOS]) == [0, 1]
    assert builtin_tokenizer.decode(builtin_tokenizer.encode("Hello, 世界!"), False) == "Hello, 世界!"


# --- the chat template -------------------------------------------------------------------------------------------


def test_the_chat_template_renders_deepseeks_format(builtin_tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

    assert render(builtin_tokenizer, messages) == f"{BOS}Be brief.{USER}Hi{ASSISTANT}"


def test_a_conversation_closes_each_answer_with_end_of_sentence(builtin_tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]

    assert render(builtin_tokenizer, messages) == f"{BOS}{USER}Hi{ASSISTANT}Hello!{EOS}{USER}Bye{ASSISTANT}"


def test_the_rendered_prompt_starts_with_one_bos_token_and_tags_are_single_tokens(builtin_tokenizer: Any) -> None:
    text = render(builtin_tokenizer, [{"role": "user", "content": "Hi"}])

    ids = builtin_tokenizer.encode(text, add_special_tokens=False)  # as the chat route encodes it

    assert ids[0] == builtin_tokenizer.bos_token_id
    assert ids.count(builtin_tokenizer.bos_token_id) == 1
    assert builtin_tokenizer.convert_ids_to_tokens(ids[-1]) == ASSISTANT
    assert USER in builtin_tokenizer.convert_ids_to_tokens(ids)


def test_earlier_tool_calls_and_their_results_render_in_deepseeks_tool_format(builtin_tokenizer: Any) -> None:
    from app.model import tool_format as t

    weather = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    now = {"id": "c2", "type": "function", "function": {"name": "now", "arguments": "{}"}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [weather, now]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"},
    ]
    calls = t.CALLS_BEGIN + t.call_text("get_weather", '{"city":"Paris"}') + "\n" + t.call_text("now", "{}")
    outputs = f"{t.OUTPUTS_BEGIN}{t.OUTPUT_BEGIN}18 C{t.OUTPUT_END}\n{t.OUTPUT_BEGIN}noon{t.OUTPUT_END}{t.OUTPUTS_END}"
    assert render(builtin_tokenizer, messages) == (
        f"{BOS}{USER}Weather?{ASSISTANT}{calls}{t.CALLS_END}{EOS}{outputs}{ASSISTANT}"
    )
    # and every marker is one token of the tokenizer, as the model was trained on them
    for marker in (t.CALLS_BEGIN, t.CALL_BEGIN, t.SEP, t.CALL_END, t.CALLS_END, t.OUTPUTS_BEGIN, t.OUTPUT_END):
        assert len(builtin_tokenizer.encode(marker, add_special_tokens=False)) == 1, marker


def test_reasoning_is_stripped_from_earlier_assistant_turns(builtin_tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"},
        {"role": "user", "content": "And 3+3?"},
    ]

    text = render(builtin_tokenizer, messages)

    assert "Add them" not in text
    assert "<think>" not in text
    assert f"{ASSISTANT}4{EOS}" in text


def test_thinking_opens_a_think_block_only_when_asked(builtin_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Hi"}]

    plain = render(builtin_tokenizer, messages)
    thinking = render(builtin_tokenizer, messages, thinking=True)
    not_thinking = render(builtin_tokenizer, messages, thinking=False)

    assert thinking == plain + "<think>\n"
    assert not_thinking == plain
    assert prompt_opens_reasoning(thinking)
    assert not prompt_opens_reasoning(plain)


def test_without_a_generation_prompt_nothing_is_opened(builtin_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Hi"}]

    text = builtin_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, thinking=True)

    assert text == f"{BOS}{USER}Hi"


# --- model sources -----------------------------------------------------------------------------------------------


def test_an_unknown_builtin_shape_names_the_known_ones() -> None:
    known = "known: builtin:qwen2-1.5b, builtin:qwen2-7b"
    with pytest.raises(ModelLoadError, match=rf"--model builtin:xyz: unknown built-in shape; {known}"):
        resolve_source("builtin:xyz", ignore)


def test_a_missing_local_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"

    with pytest.raises(ModelLoadError, match=re.escape(f"--model {missing}: no such directory")):
        resolve_source(str(missing), ignore)


def test_a_relative_missing_directory_is_not_looked_up_on_the_hub() -> None:
    with pytest.raises(ModelLoadError, match="no such directory"):
        resolve_source("./models/missing-checkpoint", ignore)


def test_a_directory_without_config_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        resolve_source(str(tmp_path), ignore)


def test_a_local_checkpoint_directory_is_used_as_it_is(builtin_dir: Path) -> None:
    assert resolve_source(str(builtin_dir), ignore) == builtin_dir


def test_a_directory_without_a_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_tokenizer(tmp_path, ignore)
