"""Where a checkpoint comes from, torch-free: a Hugging Face id, a local directory, or the built-in model, each
made a local directory; and its tokenizer. The API process reads only this module: it loads the tokenizer and
hands the directory to the engine process, which loads the weights (loader.py) and is the only one to import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.model.builtin import RANDOM_SHAPES, ensure_builtin_model, ensure_random_shape
from app.model.chat_template import DEEPSEEK_CHAT_TEMPLATE

Progress = Callable[[str], None]

# The weight formats the server loads: safetensors only (no pickled `.bin`/`.pt` files, which run code when read).
# The Hub download fetches exactly these, and a checkpoint without any is refused before anything is loaded.
LOADABLE_WEIGHTS = ("*.safetensors",)
_HUB_FILES = ["*.json", *LOADABLE_WEIGHTS, "*.model", "*.txt", "*.jinja", "*.tiktoken"]


class ModelLoadError(Exception):
    """The model could not be loaded; the message says which source and why, in one line."""


@dataclass(frozen=True)
class WeightsSpec:
    """What the engine process needs to load the weights: picklable, no torch objects."""

    directory: str
    dtype: str
    device: str
    max_model_len: int
    tensor_parallel_size: int = 1


def resolve_source(model: str | None, progress: Progress) -> Path:
    if model is None:
        progress("preparing the built-in model")
        return ensure_builtin_model()
    if model.startswith("builtin:"):
        shape = model.removeprefix("builtin:")
        if shape not in RANDOM_SHAPES:
            known = ", ".join(f"builtin:{name}" for name in RANDOM_SHAPES)
            raise ModelLoadError(f"--model {model}: unknown built-in shape; known: {known}")
        progress(f"preparing the {shape} shape with random weights (benchmarks only)")
        return ensure_random_shape(shape)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"--model {model}: the directory has no config.json; is it a checkpoint?")
        return _with_loadable_weights(model, path)
    if model.startswith(("/", "./", "../", "~")) or path.exists():
        raise ModelLoadError(f"--model {model}: no such directory")
    progress(f"downloading {model} from the Hugging Face Hub (or reusing the HF_HOME cache)")
    try:
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(model, allow_patterns=_HUB_FILES))
    except Exception as error:
        raise ModelLoadError(f"--model {model}: could not fetch it from the Hugging Face Hub: {error}") from None
    return _with_loadable_weights(model, directory)


def _with_loadable_weights(model: str, directory: Path) -> Path:
    """`directory`, once it is known to hold weights the server can load; otherwise one line saying what it holds."""
    if any(next(directory.rglob(pattern), None) for pattern in LOADABLE_WEIGHTS):
        return directory
    others = sorted({path.suffix for path in directory.rglob("*") if path.suffix in (".bin", ".pt", ".pth", ".gguf")})
    found = f"only {', '.join(others)} weights" if others else "no weight files"
    raise ModelLoadError(
        f"--model {model}: the checkpoint has {found}; the server loads {', '.join(LOADABLE_WEIGHTS)} only "
        "(pick a repository that publishes safetensors, or convert it with transformers' save_pretrained)"
    )


def load_tokenizer(directory: Path, progress: Progress) -> Any:
    """The checkpoint's own tokenizer.json, as written (transformers' per-architecture classes may rebuild it)."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    progress(f"loading the tokenizer from {directory}")
    try:
        tokenizer = TokenizersBackend.from_pretrained(directory)
    except Exception as error:
        raise ModelLoadError(f"the tokenizer in {directory} could not be loaded: {error}") from None
    if not tokenizer.chat_template:
        progress("the checkpoint has no chat template; using DeepSeek's")
        tokenizer.chat_template = DEEPSEEK_CHAT_TEMPLATE
    return tokenizer
