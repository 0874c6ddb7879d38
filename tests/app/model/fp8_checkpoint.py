"""DeepSeek-V3/R1's FP8 checkpoint format at toy size, written as their checkpoints ship: every projection's weight
in float8 e4m3 with one float32 `weight_scale_inv` per block (dequantized, weight = fp8 × scale), the embeddings,
norms, router and output head left in bf16, and `quantization_config` in config.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FP8_MAX = 448.0  # the largest float8 e4m3fn value
# DeepSeek's checkpoints use 128 x 128; every matrix of the toy DeepSeek-V3 is a multiple of 8 (kv_a_proj_with_mqa:
# 24 rows), and 16 leaves that one partial, as 576 rows over 128 leave DeepSeek-V3's own
WEIGHT_BLOCK = 8


def quantize_blocks(weight: torch.Tensor, block: int = WEIGHT_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, per-block scale) with weight ≈ fp8 × scale, blocks at the edges partial as in DeepSeek's."""
    out_features, in_features = weight.shape
    rows, cols = math.ceil(out_features / block), math.ceil(in_features / block)
    padded = torch.zeros(rows * block, cols * block)
    padded[:out_features, :in_features] = weight.float()
    blocks = padded.view(rows, block, cols, block)
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / FP8_MAX
    quantized = (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn).view(rows * block, cols * block)
    return quantized[:out_features, :in_features].contiguous(), scale


def dequantize_blocks(quantized: torch.Tensor, scale: torch.Tensor, block: int = WEIGHT_BLOCK) -> torch.Tensor:
    expanded = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return quantized.float() * expanded[: quantized.shape[0], : quantized.shape[1]]


def is_quantized(name: str) -> bool:
    return name.endswith("_proj.weight") or name.endswith("_proj_with_mqa.weight")


def write_fp8_checkpoint(source: Path, target: Path, block: int = WEIGHT_BLOCK) -> dict[str, torch.Tensor]:
    """`source` (a bf16 checkpoint directory, one safetensors file) re-written to `target` in FP8; returns the
    dequantized values of the quantized weights, by name."""
    target.mkdir(parents=True, exist_ok=True)
    tensors = load_file(source / "model.safetensors")
    written: dict[str, torch.Tensor] = {}
    dequantized: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if is_quantized(name):
            quantized, scale = quantize_blocks(tensor, block)
            written[name] = quantized
            written[name.removesuffix("weight") + "weight_scale_inv"] = scale
            dequantized[name] = dequantize_blocks(quantized, scale, block)
        else:
            written[name] = tensor
    save_file(written, target / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [block, block],
    }
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for other in source.iterdir():
        if other.name not in ("model.safetensors", "config.json"):
            (target / other.name).write_bytes(other.read_bytes())
    return dequantized
