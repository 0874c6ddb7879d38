"""FP8 checkpoints as DeepSeek-V3/R1 ship them (block-quantized float8 weights, a float32 scale per block), on a CPU:
FP8 compute needs a CUDA GPU of compute capability 8.9+, and transformers does not quantize on load without one,
but it does load a pre-quantized checkpoint by dequantizing it. That path is tested here: the weights served are
exactly the checkpoint's fp8 × scale, and the tokens are those of a plain checkpoint holding those values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GenerationConfig

from app.engine.batch_loop import BatchLoop
from app.model.loader import checkpoint_fp8_block, load_weights, partial_fp8_block, resolve_dtype
from app.model.source import ModelLoadError, WeightsSpec
from tests.app.engine.loop_helpers import Driver, greedy, tiny_deepseek_v3
from tests.app.model.fp8_checkpoint import WEIGHT_BLOCK, write_fp8_checkpoint

PROMPTS = [[5, 17, 300, 42, 9], [800, 3, 3, 64, 1, 200, 77], [11]]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the bf16 original, its FP8 version, a float32 checkpoint holding the FP8 version's dequantized values)."""
    root = tmp_path_factory.mktemp("fp8")
    original, fp8, reference = root / "bf16", root / "fp8", root / "dequantized"
    tiny_deepseek_v3().to(torch.bfloat16).save_pretrained(original)  # type: ignore[arg-type]
    GenerationConfig(bos_token_id=0, eos_token_id=999).save_pretrained(original)  # type: ignore[no-untyped-call]
    dequantized = write_fp8_checkpoint(original, fp8)
    reference.mkdir()
    tensors = {
        name: dequantized.get(name, tensor.float())
        for name, tensor in load_file(original / "model.safetensors").items()
    }
    save_file(tensors, reference / "model.safetensors", metadata={"format": "pt"})
    for other in original.iterdir():
        if other.name != "model.safetensors":
            (reference / other.name).write_bytes(other.read_bytes())
    return original, fp8, reference


def greedy_tokens(model: object, prompts: list[list[int]]) -> list[list[int]]:
    loop = BatchLoop(model, {999}, max_batch_size=4, kv_cache_tokens=512)
    for request, prompt in enumerate(prompts):
        loop.add(request, prompt, greedy(8))
    driver = Driver(loop)
    driver.run()
    return [driver.tokens(request) for request in range(len(prompts))]


def test_an_fp8_checkpoint_loads_dequantized_to_exactly_its_values(checkpoints: tuple[Path, Path, Path]) -> None:
    original, fp8, reference = checkpoints
    assert checkpoint_fp8_block(str(fp8)) == [WEIGHT_BLOCK, WEIGHT_BLOCK]
    assert checkpoint_fp8_block(str(original)) is None
    loaded = load_weights(WeightsSpec(str(fp8), "float32", "cpu", 256), lambda _: None)
    assert "FP8 checkpoint, 8x8 blocks, dequantized: FP8 compute needs a CUDA GPU" in loaded.description
    expected = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32).state_dict()
    served = loaded.model.state_dict()
    assert served.keys() == expected.keys()  # no scale left over: every projection is a plain matrix again
    for name, values in expected.items():
        assert torch.equal(served[name], values), name
    bf16 = AutoModelForCausalLM.from_pretrained(original, dtype=torch.float32).state_dict()
    rounded = [name for name in bf16 if not torch.equal(bf16[name], expected[name])]
    assert any("experts" in name for name in rounded) and any("self_attn" in name for name in rounded)


def test_an_fp8_checkpoint_serves_the_tokens_of_its_dequantized_values(checkpoints: tuple[Path, Path, Path]) -> None:
    _, fp8, reference = checkpoints
    served = greedy_tokens(load_weights(WeightsSpec(str(fp8), "float32", "cpu", 256), lambda _: None).model, PROMPTS)
    model = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32)
    model.train(False)
    for prompt, tokens in zip(PROMPTS, served, strict=True):
        alone = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
            do_sample=False,
            max_new_tokens=8,
            min_new_tokens=8,
        )[0, len(prompt) :].tolist()
        assert tokens == alone


def test_dtype_auto_loads_an_fp8_checkpoint_in_the_cpus_dtype(checkpoints: tuple[Path, Path, Path]) -> None:
    _, fp8, _ = checkpoints
    loaded = load_weights(WeightsSpec(str(fp8), "auto", "cpu", 256), lambda _: None)
    chosen = resolve_dtype("auto", torch.device("cpu"))  # float32 where bf16 is emulated, else the checkpoint's
    expected = torch.bfloat16 if chosen == "auto" else chosen
    dequantized = {p.dtype for name, p in loaded.model.named_parameters() if "proj" in name}
    assert dequantized == {expected}  # (the router's score bias stays in float32, as transformers keeps it)
    assert "dequantized" in loaded.description


def test_dtype_fp8_without_a_gpu_that_computes_in_fp8_is_refused_in_one_line(
    checkpoints: tuple[Path, Path, Path],
) -> None:
    _, fp8, _ = checkpoints
    with pytest.raises(ModelLoadError) as refused:
        load_weights(WeightsSpec(str(fp8), "fp8", "cpu", 256), lambda _: None)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("--dtype fp8 needs a CUDA GPU with compute capability 8.9 or newer")
    assert "whole blocks loads dequantized with --dtype auto (DeepSeek-V3/R1's are not" in message


def test_an_fp8_checkpoint_with_partial_blocks_is_refused_where_it_would_be_dequantized_wrong(
    checkpoints: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Blocks of 16 leave the toy's kv_a_proj_with_mqa (24 rows) partial, as DeepSeek-V3's (576 rows over 128):
    transformers would take 12-row blocks from its 2 scale rows and load wrong values without a word."""
    original, _, _ = checkpoints
    write_fp8_checkpoint(original, tmp_path, block=16)
    with pytest.raises(ModelLoadError) as refused:
        load_weights(WeightsSpec(str(tmp_path), "float32", "cpu", 256), lambda _: None)
    message = str(refused.value)
    assert "\n" not in message
    assert message.endswith(
        "transformers cannot dequantize it here: model.layers.0.self_attn.kv_a_proj_with_mqa.weight [24, 64] is not "
        "whole 16x16 blocks"
    )
    assert "runs in FP8 only on a CUDA GPU of compute capability 8.9+" in message


def test_a_partial_block_is_found_when_a_weight_and_its_scale_sit_in_different_shards(
    checkpoints: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    original, _, _ = checkpoints
    write_fp8_checkpoint(original, tmp_path, block=16)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    scales = {name: tensor for name, tensor in tensors.items() if name.endswith("weight_scale_inv")}
    save_file(scales, tmp_path / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    rest = {name: tensor for name, tensor in tensors.items() if name not in scales}
    save_file(rest, tmp_path / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    assert partial_fp8_block(str(tmp_path), [16, 16]) == "model.layers.0.self_attn.kv_a_proj_with_mqa.weight [24, 64]"
    assert partial_fp8_block(str(tmp_path), [8, 8]) is None
