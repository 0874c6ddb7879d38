"""Server settings: every setting is a command-line flag and an environment variable.

Precedence: flag, then environment variable, then default. Every value is validated here, once, at the edge;
a bad value ends the process with one line naming the flag, the variable and the fix (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

DTYPES = ("auto", "bfloat16", "float16", "float32", "fp8")
DEVICES = ("auto", "cpu", "cuda")


class SettingsError(ValueError):
    """A setting has a value the server cannot use; the message names it and says what is expected."""


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    model: str | None = None  # None: the built-in tiny DeepSeek-shaped model
    served_model_name: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    tensor_parallel_size: int = 1  # ranks the model is split across, one per GPU (app.engine.tensor_parallel)
    # 32 concurrent requests are served without refusing any: all 32 decode together, more wait in the queue.
    max_batch_size: int = 32
    max_queue: int = 256
    max_model_len: int = 4096
    prefill_chunk_tokens: int | None = None  # None: by device (app.engine.worker.chunk_tokens)
    kv_cache_memory: int | None = None  # bytes; None: a fraction of the memory free after loading
    kv_cache_memory_fraction: float | None = None  # None: by device (app.engine.worker.KV_CACHE_FRACTION)
    enable_prefix_caching: bool = True
    block_size: int = 16
    r1_defaults: bool | None = None  # None: when the model source names an R1 checkpoint
    api_keys: tuple[str, ...] = ()
    # The pod's grace period must cover preStop pause + drain + a few seconds to close (the stack sets
    # terminationGracePeriodSeconds = preStop + drain + 5 s); 25 s keeps the whole shutdown near a minute at most.
    drain_timeout: float = 25.0
    max_body_bytes: int = 4 * 1024 * 1024
    log_level: str = "info"

    @property
    def model_name(self) -> str:
        """The name clients put in `model`: the served name, else the model source, else the built-in's name."""
        from app.model.builtin import BUILTIN_MODEL_NAME

        return self.served_model_name or self.model or BUILTIN_MODEL_NAME

    @property
    def r1(self) -> bool:
        """Whether DeepSeek-R1's recommended request defaults apply (app.model.conventions)."""
        from app.model.conventions import is_r1_checkpoint

        return self.r1_defaults if self.r1_defaults is not None else is_r1_checkpoint(self.model)


@dataclass(frozen=True)
class _Option:
    field: str
    flag: str
    env: str
    help: str
    parse: Callable[[str], Any]


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise SettingsError(f"expected a whole number >= {minimum}, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"expected a whole number >= {minimum}, got {value}")
        return value

    return parse


def _port(raw: str) -> int:
    value = _int_at_least(1)(raw)
    if value > 65535:
        raise SettingsError(f"expected a port between 1 and 65535, got {value}")
    return value


def _number(raw: str, valid: Callable[[float], bool], expected: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"expected {expected}, got {raw!r}") from None
    if not valid(value):
        raise SettingsError(f"expected {expected}, got {raw!r}")
    return value


def _seconds(raw: str) -> float:
    return _number(raw, lambda value: 0 <= value < float("inf"), "a number of seconds >= 0")


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise SettingsError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _non_empty(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise SettingsError("expected a non-empty value")
    return value


_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?", re.IGNORECASE)


def _bytes(raw: str) -> int:
    """A memory size: bytes, or with a unit as Kubernetes and vLLM users write them (8GiB, 8Gi, 512MB, 2G)."""
    match = _SIZE.fullmatch(raw.strip())
    if match is None:
        raise SettingsError(f"expected a size such as 8GiB, 512MiB or a number of bytes, got {raw!r}")
    number, unit, binary = float(match[1]), match[2].lower(), bool(match[3])
    scale = 1024 ** " kmgt".index(unit) if binary and unit else _SIZE_UNITS[unit]
    value = int(number * scale)
    if value < 1024**2:
        raise SettingsError(f"expected at least 1MiB, got {raw!r}")
    return value


def _fraction(raw: str) -> float:
    return _number(raw, lambda value: 0 < value <= 1, "a fraction above 0 and at most 1")


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"expected true or false, got {raw!r}")


def _auto_bool(raw: str) -> bool | None:
    if raw.strip().lower() == "auto":
        return None
    try:
        return _bool(raw)
    except SettingsError:
        raise SettingsError(f"expected true, false or auto, got {raw!r}") from None


def _block_size(raw: str) -> int:
    value = _int_at_least(1)(raw)
    if value > 256 or value & (value - 1):
        raise SettingsError(f"expected a power of two from 1 to 256, got {value}")
    return value


def _keys(raw: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in raw.split(",") if key.strip())
    if not keys:
        raise SettingsError("expected one or more comma-separated keys, got none")
    return keys


OPTIONS: tuple[_Option, ...] = (
    _Option("host", "--host", "SERVER_HOST", "address to listen on (default 0.0.0.0)", _non_empty),
    _Option("port", "--port", "SERVER_PORT", "port to listen on (default 8080)", _port),
    _Option(
        "model",
        "--model",
        "MODEL",
        "Hugging Face model id or local directory (default: the built-in tiny DeepSeek-R1-Distill-Qwen-shaped model)",
        _non_empty,
    ),
    _Option(
        "served_model_name",
        "--served-model-name",
        "SERVED_MODEL_NAME",
        "name clients use in `model` (default: the --model value)",
        _non_empty,
    ),
    _Option(
        "dtype",
        "--dtype",
        "DTYPE",
        f"weights dtype: {', '.join(DTYPES)} (default auto: the checkpoint's own, except float32 on a CPU without "
        "native bf16)",
        _choice(DTYPES),
    ),
    _Option(
        "device", "--device", "DEVICE", f"{', '.join(DEVICES)} (default auto: cuda when present)", _choice(DEVICES)
    ),
    _Option(
        "tensor_parallel_size",
        "--tensor-parallel-size",
        "TENSOR_PARALLEL_SIZE",
        "GPUs the model is split across, one rank each, by tensor parallelism; on a CPU, processes sharing its "
        "cores (default 1)",
        _int_at_least(1),
    ),
    _Option(
        "max_batch_size",
        "--max-batch-size",
        "MAX_BATCH_SIZE",
        "sequences decoded together (default 32)",
        _int_at_least(1),
    ),
    _Option(
        "max_queue", "--max-queue", "MAX_QUEUE", "waiting requests before answering 429 (default 256)", _int_at_least(0)
    ),
    _Option(
        "max_model_len",
        "--max-model-len",
        "MAX_MODEL_LEN",
        "prompt + completion tokens per request (default 4096)",
        _int_at_least(2),
    ),
    _Option(
        "prefill_chunk_tokens",
        "--prefill-chunk-tokens",
        "PREFILL_CHUNK_TOKENS",
        "a longer prompt that arrives while others stream is prefilled a chunk a step, between their tokens, each "
        "chunk costing what this many tokens cost at the prompt's start (deeper chunks are shorter); 0: every "
        "prompt whole (default: 256 on a CPU, 2048 on a GPU)",
        _int_at_least(0),
    ),
    _Option(
        "kv_cache_memory",
        "--kv-cache-memory",
        "KV_CACHE_MEMORY",
        "memory for the KV cache, e.g. 8GiB (default: --kv-cache-memory-fraction of the memory free after loading)",
        _bytes,
    ),
    _Option(
        "kv_cache_memory_fraction",
        "--kv-cache-memory-fraction",
        "KV_CACHE_MEMORY_FRACTION",
        "share of the memory free after the weights load that the KV cache takes, when --kv-cache-memory is unset "
        "(default: 0.9 of a GPU's, 0.5 of a CPU machine's available memory)",
        _fraction,
    ),
    _Option(
        "enable_prefix_caching",
        "--enable-prefix-caching",
        "ENABLE_PREFIX_CACHING",
        "reuse the KV blocks of a prompt prefix seen before instead of recomputing them: true or false (default true)",
        _bool,
    ),
    _Option(
        "block_size",
        "--block-size",
        "BLOCK_SIZE",
        "tokens per KV-cache block, the unit of allocation and of prefix reuse (default 16)",
        _block_size,
    ),
    _Option(
        "r1_defaults",
        "--r1-defaults",
        "R1_DEFAULTS",
        "DeepSeek-R1's recommended defaults for what a request leaves out: temperature 0.6, top_p 0.95, and the "
        "response opened with <think>; true, false or auto (default auto: when the model names an R1 checkpoint, "
        "e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-7B)",
        _auto_bool,
    ),
    _Option("api_keys", "--api-key", "API_KEYS", "comma-separated API keys; unset: no authentication", _keys),
    _Option(
        "drain_timeout",
        "--drain-timeout",
        "DRAIN_TIMEOUT",
        "seconds in-flight requests may take to finish after SIGTERM (default 25)",
        _seconds,
    ),
    _Option(
        "max_body_bytes",
        "--max-body-bytes",
        "MAX_BODY_BYTES",
        "largest request body accepted (default 4194304)",
        _int_at_least(1024),
    ),
    _Option(
        "log_level",
        "--log-level",
        "LOG_LEVEL",
        "debug, info, warning, error (default info)",
        _choice(("debug", "info", "warning", "error")),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="OpenAI-compatible inference server for DeepSeek models. "
        "Each flag can also be set by the environment variable shown; a flag wins over its variable.",
    )
    for option in OPTIONS:
        parser.add_argument(option.flag, dest=option.field, default=None, help=f"{option.help} [env {option.env}]")
    return parser


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read flags and environment variables into validated Settings; raise SettingsError naming the bad one."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = getattr(args, option.field)
        source = option.flag
        if raw is None:
            raw = environ.get(option.env)
            source = option.env
            if raw is not None and not raw.strip():
                continue  # an empty variable means "not set", as shells and Kubernetes often leave them
        if raw is None:
            continue
        try:
            values[option.field] = option.parse(raw)
        except SettingsError as error:
            raise SettingsError(f"invalid {source} ({option.flag} / {option.env}): {error}") from None
    settings = Settings(**values)
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    if settings.dtype == "fp8" and settings.device == "cpu":
        raise SettingsError("--dtype fp8 needs a CUDA GPU: use --dtype auto (or bfloat16/float32) with --device cpu")


UNSET_MEANS = {
    "model": "the built-in model",
    "served_model_name": "the model value",
    "api_keys": "no keys",
    "prefill_chunk_tokens": "by device",
    "kv_cache_memory": "by fraction",
    "kv_cache_memory_fraction": "by device",
    "r1_defaults": "auto",
}


def describe() -> str:
    """A Markdown table of every setting, for docs/server/configuration.md (scripts/docs)."""
    defaults = {f.name: f.default for f in fields(Settings)}
    rows = ["| flag | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        default = defaults[option.field]
        shown = UNSET_MEANS.get(option.field, "unset") if default in (None, ()) else str(default)
        meaning = re.sub(r" ?\(default [^):]*\)", "", option.help)  # the default has its own column
        rows.append(f"| `{option.flag}` | `{option.env}` | {shown} | {meaning} |")
    return "\n".join(rows)
