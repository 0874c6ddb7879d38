"""Load a checkpoint's weights for serving, in the engine process: the directory source.py resolved, with
`from_pretrained` (or drawn at random for a benchmark shape), onto the device in the dtype the hardware suits.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.model import hardware
from app.model.builtin import RANDOM_WEIGHTS_MARKER
from app.model.source import ModelLoadError, Progress, WeightsSpec


@dataclass
class LoadedWeights:
    model: Any
    context_length: int
    eos_token_ids: set[int]
    description: str


def check_split(spec: WeightsSpec, device: str) -> None:
    """Whether the model can be split `spec.tensor_parallel_size` ways here; ModelLoadError saying why not."""
    size = spec.tensor_parallel_size
    flag = f"--tensor-parallel-size {size} (TENSOR_PARALLEL_SIZE)"
    if (Path(spec.directory) / RANDOM_WEIGHTS_MARKER).exists():
        raise ModelLoadError(f"{flag}: a built-in random shape draws its weights per process and cannot be split")
    config = json.loads((Path(spec.directory) / "config.json").read_text())
    heads = int(config.get("num_attention_heads", 0))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    if heads % size or kv_heads % size:
        raise ModelLoadError(
            f"{flag}: the model has {heads} attention heads and {kv_heads} key/value heads; the size must divide both"
        )
    available = torch.cuda.device_count() if device == "cuda" else hardware.cpu_count()
    if size > available:
        where = "GPUs are visible" if device == "cuda" else "CPU cores are available"
        raise ModelLoadError(f"{flag}: only {available} {where}")


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
            raise ModelLoadError(
                "--dtype fp8 needs a CUDA GPU with compute capability 8.9 or newer (Ada, Hopper); elsewhere a "
                "checkpoint shipped in FP8 whose matrices are whole blocks loads dequantized with --dtype auto "
                "(DeepSeek-V3/R1's are not: they need such a GPU)"
            )
        return torch.bfloat16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[setting]


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
    if spec.dtype == "fp8" and checkpoint_fp8_block(spec.directory) is None:
        # a bf16 checkpoint, quantized in blocks on load; one shipped in FP8 loads with its own quantization config
        kwargs["quantization_config"] = FineGrainedFP8Config()
    if spec.tensor_parallel_size > 1:
        kwargs["tp_plan"] = "auto"  # each rank loads its own shard (app.engine.tensor_parallel)
    block = checkpoint_fp8_block(spec.directory)
    if block is not None and not fp8_compute(device) and (partial := partial_fp8_block(spec.directory, block)):
        raise ModelLoadError(
            f"{spec.directory} is an FP8 checkpoint, which runs in FP8 only on a CUDA GPU of compute capability 8.9+; "
            f"transformers cannot dequantize it here: {partial} is not whole {'x'.join(map(str, block))} blocks"
        )
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
        f"{parameters / 1e6:.1f}M parameters, {next(model.parameters()).dtype}{_fp8_note(spec.directory, model)}, "
        f"{device}, loaded in {time.perf_counter() - started:.1f}s"
    )
    return LoadedWeights(model, context, eos, description)


def checkpoint_fp8_block(directory: str) -> list[int] | None:
    """The weight block of a checkpoint shipped in FP8 (DeepSeek-V3/R1's: [128, 128]), None for any other."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    quantization = config.get("quantization_config") or {}
    if quantization.get("quant_method") != "fp8":
        return None
    return list(quantization.get("weight_block_size") or [128, 128])


def fp8_compute(device: torch.device) -> bool:
    """Whether this device computes in FP8 (CUDA compute capability 8.9+: Ada, Hopper and later)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def partial_fp8_block(directory: str, block: list[int]) -> str | None:
    """The first quantized matrix of an FP8 checkpoint that is not whole blocks (e.g. DeepSeek-V3's
    kv_a_proj_with_mqa, 576 rows over 128-row blocks), read from the safetensors headers alone; None if none is.
    transformers 5.24 dequantizes (where FP8 cannot run) with a block derived from each scale grid, which is wrong
    for such a matrix: 576 rows over 5 scale rows either fails to load or, where it divides, loads wrong values."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}  # across every shard: a weight and its scale may sit in different files
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(path), "pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shapes[name] = list(tensors.get_slice(name).get_shape())
    for scale in sorted(name for name in shapes if name.endswith(".weight_scale_inv")):
        weight = shapes.get(scale.removesuffix("_scale_inv"))
        if weight is not None and any(size % edge for size, edge in zip(weight[-2:], block, strict=True)):
            return f"{scale.removesuffix('_scale_inv')} {weight[-2:]}"
    return None


def _fp8_note(directory: str, model: Any) -> str:
    """What became of FP8 weights: kept (FP8 compute), or dequantized by transformers where FP8 cannot run."""
    kept = any(p.dtype == torch.float8_e4m3fn for p in model.parameters())
    block = checkpoint_fp8_block(directory)
    if block is None:
        return " (quantized to FP8 on load)" if kept else ""
    shape = "x".join(map(str, block))
    if kept:
        return f" (FP8 checkpoint, {shape} blocks, in FP8)"
    return f" (FP8 checkpoint, {shape} blocks, dequantized: FP8 compute needs a CUDA GPU of compute capability 8.9+)"


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
