"""Which checkpoints the loader accepts (safetensors weights, one line for anything else), and the dtype it picks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.model import hardware
from app.model.loader import resolve_dtype
from app.model.source import LOADABLE_WEIGHTS, ModelLoadError, resolve_source


def ignore(_: str) -> None:
    pass


def checkpoint(tmp_path: Path, *weights: str) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    for name in weights:
        (tmp_path / name).write_bytes(b"\0" * 16)
    return tmp_path


def test_a_directory_with_only_bin_weights_is_refused_in_one_line(tmp_path: Path) -> None:
    directory = checkpoint(tmp_path, "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin")
    with pytest.raises(ModelLoadError) as caught:
        resolve_source(str(directory), ignore)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"--model {directory}: the checkpoint has only .bin weights")
    assert "loads *.safetensors only" in message


def test_a_directory_without_any_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="the checkpoint has no weight files"):
        resolve_source(str(checkpoint(tmp_path)), ignore)


def test_safetensors_checkpoints_are_accepted_sharded_or_not(tmp_path: Path) -> None:
    directory = checkpoint(tmp_path, "model-00001-of-00002.safetensors", "pytorch_model.bin")
    assert resolve_source(str(directory), ignore) == directory


def test_the_hub_download_asks_for_the_loadable_formats_only() -> None:
    from app.model import source

    assert LOADABLE_WEIGHTS == ("*.safetensors",)
    assert [pattern for pattern in source._HUB_FILES if pattern.endswith((".bin", ".pt", ".safetensors"))] == [
        "*.safetensors"
    ]


def test_a_hub_repository_without_safetensors_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    # The Hub answers with what the patterns matched: config and tokenizer, no weights (a `.bin`-only repository).
    downloaded = checkpoint(tmp_path)
    asked: list[list[str]] = []

    def snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        asked.append(allow_patterns)
        return str(downloaded)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(ModelLoadError, match=r"--model deepseek-ai/old-bin-only: the checkpoint has no weight files"):
        resolve_source("deepseek-ai/old-bin-only", ignore)
    assert "*.safetensors" in asked[0]


@pytest.mark.parametrize(("native", "expected"), [(True, "auto"), (False, torch.float32)])
def test_auto_dtype_on_a_cpu_follows_whether_bf16_is_native(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: object
) -> None:
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    # An explicit dtype is the operator's choice, whatever the CPU.
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_auto_dtype_on_a_gpu_is_the_checkpoints_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", torch.device("cuda")) == "auto"


def test_the_hardware_line_names_the_cpu_capability_and_bf16() -> None:
    line = hardware.describe()
    assert hardware.cpu_capability() in line
    assert ("native bf16" in line) == hardware.cpu_has_native_bf16()
    assert hardware.cpu_capability().strip()  # torch names it: AVX2, AVX512, SVE256 …
