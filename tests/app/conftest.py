"""Fixtures shared by the server tests: one model cache and one running server for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.live_server import LiveServer, running


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HF_HOME for every server in the session: the built-in model is built once, by the first server."""
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(scope="session")
def server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The server with its defaults, as `python -m app` starts it."""
    with running([], model_cache, tmp_path_factory.mktemp("logs") / "server.log") as live:
        yield live


# --- the built-in model, in process, for the engine, text and model unit tests -----------------------------------


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache root the built-in checkpoint is built into, once per session."""
    return tmp_path_factory.mktemp("builtin-cache")


@pytest.fixture(scope="session")
def builtin_dir(builtin_cache: Path) -> Path:
    """The built-in checkpoint's directory (config, safetensors weights, tokenizer, chat template)."""
    from app.model.builtin import ensure_builtin_model

    return ensure_builtin_model(builtin_cache)


@pytest.fixture(scope="session")
def builtin_tokenizer(builtin_dir: Path) -> Any:
    """The real DeepSeek tokenizer, loaded from the checkpoint as the API process loads it."""
    from app.model.source import load_tokenizer

    return load_tokenizer(builtin_dir, lambda _: None)


@pytest.fixture(scope="session")
def builtin_weights(builtin_dir: Path) -> Any:
    """The checkpoint loaded as the server loads it by default: dtype auto (bfloat16), on the CPU."""
    from app.model.loader import load_weights
    from app.model.source import WeightsSpec

    return load_weights(WeightsSpec(str(builtin_dir), "auto", "cpu", 4096), lambda _: None)


@pytest.fixture(scope="session")
def builtin_weights_fp32(builtin_dir: Path) -> Any:
    """The same checkpoint in float32, for tests that compare token ids between two ways of computing them.

    In bfloat16 the random model's top two logits are often one rounding step apart (16.5 vs 16.375), so a cached
    decode and a full forward pass of the same sequence can pick different tokens; float32 leaves no such ties.
    """
    from app.model.loader import load_weights
    from app.model.source import WeightsSpec

    return load_weights(WeightsSpec(str(builtin_dir), "float32", "cpu", 4096), lambda _: None)
