"""Settings (app/settings.py): every setting is a flag and an environment variable, validated once at the edge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.model.builtin import BUILTIN_MODEL_NAME
from app.settings import OPTIONS, Settings, SettingsError, describe, load_settings

REPO = Path(__file__).resolve().parents[2]


def run_app(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m app ARGS` from the repository root, with none of the settings' variables set."""
    env = {k: v for k, v in os.environ.items() if k not in {o.env for o in OPTIONS}}
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


# --- defaults ----------------------------------------------------------------------------------------------------


def test_defaults_when_nothing_is_set() -> None:
    settings = load_settings([], {})

    assert settings == Settings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.model is None
    assert settings.dtype == "auto"
    assert settings.device == "auto"
    assert settings.api_keys == ()
    assert settings.max_model_len == 4096
    assert settings.max_queue == 256
    assert settings.log_level == "info"
    assert settings.prefill_chunk_tokens is None  # by device: app.engine.worker.chunk_tokens


def test_default_batch_serves_32_concurrent_requests_together() -> None:
    assert load_settings([], {}).max_batch_size == 32


def test_default_drain_timeout_fits_a_30_second_grace_period() -> None:
    drain = load_settings([], {}).drain_timeout

    assert drain == 25.0
    assert drain < 30.0


# --- flags, variables and their precedence -----------------------------------------------------------------------


def test_environment_variable_sets_a_value() -> None:
    settings = load_settings([], {"MAX_BATCH_SIZE": "8", "SERVER_PORT": "9000", "API_KEYS": "a, b ,c"})

    assert settings.max_batch_size == 8
    assert settings.port == 9000
    assert settings.api_keys == ("a", "b", "c")


def test_flag_wins_over_environment_variable() -> None:
    settings = load_settings(
        ["--max-batch-size", "4", "--port", "9001"], {"MAX_BATCH_SIZE": "8", "SERVER_PORT": "9000"}
    )

    assert settings.max_batch_size == 4
    assert settings.port == 9001


def test_flag_wins_even_over_an_invalid_environment_variable() -> None:
    assert load_settings(["--max-batch-size", "4"], {"MAX_BATCH_SIZE": "abc"}).max_batch_size == 4


def test_real_process_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_QUEUE", "7")

    assert load_settings([]).max_queue == 7


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_environment_variable_means_unset(empty: str) -> None:
    environ = {option.env: empty for option in OPTIONS}

    assert load_settings([], environ) == Settings()


def test_values_are_trimmed_and_choices_are_case_insensitive() -> None:
    settings = load_settings(
        [], {"MAX_BATCH_SIZE": " 16 ", "DTYPE": "BFloat16", "DEVICE": " CPU ", "LOG_LEVEL": "DEBUG"}
    )

    assert settings.max_batch_size == 16
    assert settings.dtype == "bfloat16"
    assert settings.device == "cpu"
    assert settings.log_level == "debug"


def test_every_option_has_a_flag_and_a_variable_and_is_a_settings_field() -> None:
    fields = set(Settings.__dataclass_fields__)
    flags = [o.flag for o in OPTIONS]
    envs = [o.env for o in OPTIONS]

    assert {o.field for o in OPTIONS} == fields
    assert len(set(flags)) == len(flags)
    assert len(set(envs)) == len(envs)


def test_describe_documents_every_flag_and_variable() -> None:
    table = describe()

    for option in OPTIONS:
        assert f"`{option.flag}`" in table
        assert f"`{option.env}`" in table


def test_model_name_prefers_served_name_then_model_then_builtin() -> None:
    assert load_settings([], {}).model_name == BUILTIN_MODEL_NAME
    assert load_settings(["--model", "deepseek-ai/DeepSeek-R1"], {}).model_name == "deepseek-ai/DeepSeek-R1"
    both = load_settings(["--model", "/models/r1", "--served-model-name", "r1"], {})
    assert both.model_name == "r1"


# --- invalid values ----------------------------------------------------------------------------------------------

INVALID_ENV = [
    ("MAX_BATCH_SIZE", "abc"),
    ("MAX_BATCH_SIZE", "0"),
    ("MAX_BATCH_SIZE", "2.5"),
    ("TENSOR_PARALLEL_SIZE", "0"),
    ("TENSOR_PARALLEL_SIZE", "two"),
    ("SERVER_PORT", "70000"),
    ("SERVER_PORT", "0"),
    ("DTYPE", "fp4"),
    ("DEVICE", "tpu"),
    ("DRAIN_TIMEOUT", "-1"),
    ("DRAIN_TIMEOUT", "nan"),
    ("DRAIN_TIMEOUT", "inf"),
    ("DRAIN_TIMEOUT", "soon"),
    ("API_KEYS", ",,"),
    ("MAX_QUEUE", "-1"),
    ("MAX_MODEL_LEN", "1"),
    ("MAX_BODY_BYTES", "100"),
    ("LOG_LEVEL", "verbose"),
    ("KV_CACHE_MEMORY", "lots"),
    ("KV_CACHE_MEMORY", "8XB"),
    ("KV_CACHE_MEMORY", "1000"),  # under 1 MiB: surely a unit was forgotten
    ("KV_CACHE_MEMORY_FRACTION", "0"),
    ("KV_CACHE_MEMORY_FRACTION", "1.5"),
    ("KV_CACHE_MEMORY_FRACTION", "half"),
    ("ENABLE_PREFIX_CACHING", "maybe"),
    ("BLOCK_SIZE", "0"),
    ("BLOCK_SIZE", "24"),
    ("BLOCK_SIZE", "512"),
    ("R1_DEFAULTS", "sometimes"),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("8GiB", 8 * 1024**3), ("8Gi", 8 * 1024**3), ("512MiB", 512 * 1024**2), ("2G", 2 * 10**9), ("1048576", 2**20)],
)
def test_kv_cache_memory_takes_sizes_as_kubernetes_and_vllm_users_write_them(raw: str, expected: int) -> None:
    assert load_settings([], {"KV_CACHE_MEMORY": raw}).kv_cache_memory == expected


def test_the_kv_cache_settings_default_to_by_device_with_prefix_caching_on() -> None:
    settings = load_settings([], {})
    assert (settings.kv_cache_memory, settings.kv_cache_memory_fraction) == (None, None)
    assert (settings.enable_prefix_caching, settings.block_size) == (True, 16)
    off = load_settings(["--enable-prefix-caching", "false", "--block-size", "32"], {"KV_CACHE_MEMORY_FRACTION": "0.3"})
    assert (off.enable_prefix_caching, off.block_size, off.kv_cache_memory_fraction) == (False, 32, 0.3)


def option_for_env(env: str) -> tuple[str, str]:
    (option,) = [o for o in OPTIONS if o.env == env]
    return option.flag, option.env


@pytest.mark.parametrize(("env", "value"), INVALID_ENV)
def test_invalid_environment_variable_names_flag_and_variable(env: str, value: str) -> None:
    flag, _ = option_for_env(env)

    with pytest.raises(SettingsError) as raised:
        load_settings([], {env: value})

    message = str(raised.value)
    assert flag in message
    assert env in message
    assert "\n" not in message


@pytest.mark.parametrize(("env", "value"), INVALID_ENV)
def test_invalid_flag_names_flag_and_variable(env: str, value: str) -> None:
    flag, _ = option_for_env(env)

    with pytest.raises(SettingsError) as raised:
        load_settings([flag, value], {})

    message = str(raised.value)
    assert message.startswith(f"invalid {flag} ")
    assert env in message


def test_error_says_what_is_expected_and_what_was_given() -> None:
    with pytest.raises(SettingsError, match=r"invalid SERVER_PORT \(--port / SERVER_PORT\): .*65535.*70000"):
        load_settings([], {"SERVER_PORT": "70000"})


def test_empty_flag_value_is_refused_not_treated_as_unset() -> None:
    with pytest.raises(SettingsError, match="--host"):
        load_settings(["--host", ""], {})


@pytest.mark.parametrize(
    ("argv", "environ"),
    [(["--dtype", "fp8", "--device", "cpu"], {}), ([], {"DTYPE": "fp8", "DEVICE": "cpu"})],
)
def test_fp8_on_cpu_is_refused(argv: list[str], environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="--dtype fp8"):
        load_settings(argv, environ)


def test_fp8_is_accepted_when_the_device_is_not_cpu() -> None:
    assert load_settings(["--dtype", "fp8"], {}).dtype == "fp8"
    assert load_settings(["--dtype", "fp8", "--device", "cuda"], {}).device == "cuda"


# --- the command line --------------------------------------------------------------------------------------------


def test_help_exits_zero_and_lists_every_variable_and_flag() -> None:
    result = run_app("--help")

    assert result.returncode == 0, result.stderr
    for option in OPTIONS:
        assert option.env in result.stdout
        assert option.flag in result.stdout


def test_invalid_flag_exits_2_with_one_line_and_no_traceback() -> None:
    result = run_app("--max-batch-size", "0")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: invalid --max-batch-size")
    assert "MAX_BATCH_SIZE" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_tensor_parallel_size_from_flag_or_environment() -> None:
    assert load_settings([], {}).tensor_parallel_size == 1
    assert load_settings([], {"TENSOR_PARALLEL_SIZE": "8"}).tensor_parallel_size == 8
    assert load_settings(["--tensor-parallel-size", "2"], {"TENSOR_PARALLEL_SIZE": "8"}).tensor_parallel_size == 2
