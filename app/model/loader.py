"""Load a checkpoint for serving: a Hugging Face id, a local directory, or the built-in model, one code path.

Every source becomes a local directory first (the Hub's snapshot cache, an S3-synced folder, or the built-in
build). The API process loads the tokenizer from it; the engine process loads the weights from it, both with
`from_pretrained`. Progress is logged stage by stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.model import hardware
from app.model.builtin import RANDOM_SHAPES, RANDOM_WEIGHTS_MARKER, ensure_builtin_model, ensure_random_shape
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


@dataclass
class LoadedWeights:
    model: Any
    context_length: int
    eos_token_ids: set[int]
    description: str


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda (DEVICE=cuda) was asked for, but torch sees no CUDA GPU")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype | str:
    """`auto`: the checkpoint's own dtype (bfloat16 for DeepSeek's checkpoints), except on a CPU whose bf16 is
    emulated (no AVX512-BF16, AMX or Arm BF16): there float32, several times faster but twice the weights' memory
    (bench/results/cpu-defaults-*.txt); `--dtype bfloat16` keeps the memory where it is short."""
    if setting == "auto":
        if device.type == "cpu" and not hardware.cpu_has_native_bf16():
            return torch.float32
        return "auto"
    if setting == "fp8":
        if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
            raise ModelLoadError("--dtype fp8 needs a CUDA GPU with compute capability 8.9 or newer (Ada, Hopper)")
        return torch.bfloat16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[setting]


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


def load_weights(spec: WeightsSpec, progress: Progress) -> LoadedWeights:
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config, GenerationConfig

    started = time.perf_counter()
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    progress(f"loading weights from {spec.directory} onto {device} ({dtype})")
    # SDPA on CPUs too (python -m bench.cpu_defaults; bench/results/cpu-defaults-2core-avx2.txt): eager attention
    # prefills a batch of 28-token chat turns ~25% faster, but a 1,300-token prompt 7.6x slower (1.88 s vs 0.25 s
    # in float32 on 2 AVX2 cores), and decodes no faster. The gain on short prompts is not worth the long ones' loss.
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    if spec.dtype == "fp8":
        kwargs["quantization_config"] = FineGrainedFP8Config()
    try:
        if (Path(spec.directory) / RANDOM_WEIGHTS_MARKER).exists():
            model = _random_model(spec.directory, device, dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(spec.directory, **kwargs)
            model = model.to(device).eval()  # type: ignore[arg-type]
    except Exception as error:
        raise ModelLoadError(f"the weights in {spec.directory} could not be loaded: {error}") from None

    context = int(getattr(model.config, "max_position_embeddings", 0) or spec.max_model_len)
    if spec.max_model_len > context:
        raise ModelLoadError(
            f"--max-model-len {spec.max_model_len} (MAX_MODEL_LEN) exceeds the model's context of {context} tokens"
        )
    try:
        generation_eos = GenerationConfig.from_pretrained(spec.directory).eos_token_id
    except OSError:
        generation_eos = None
    eos = _ids(generation_eos) | _ids(model.config.eos_token_id)
    parameters = sum(p.numel() for p in model.parameters())
    description = (
        f"{parameters / 1e6:.1f}M parameters, {next(model.parameters()).dtype}, {device}, "
        f"loaded in {time.perf_counter() - started:.1f}s"
    )
    return LoadedWeights(model, context, eos, description)


def _random_model(directory: str, device: torch.device, dtype: torch.dtype | str) -> Any:
    """Build the model from its config straight on the device, weights drawn at random (benchmark shapes)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(directory)
    chosen = torch.bfloat16 if dtype == "auto" else dtype
    assert isinstance(chosen, torch.dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(chosen)
    try:
        with device:
            model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def _ids(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in (value if isinstance(value, list | tuple | set) else [value])}
