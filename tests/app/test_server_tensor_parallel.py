"""Tensor parallelism on a CPU (app/engine/tensor_parallel.py): the built-in model split over two ranks (gloo), as a
user runs it, `python -m app --tensor-parallel-size 2`, against the same requests on one rank.

Token-for-token comparisons run in float32 (`EXACT`). In bf16 each rank's share of a row-split matrix is rounded to
bf16 before the all-reduce sums the shares, which one rank's matmul (accumulating in float32) never does, so greedy
tokens of random weights, whose logits lie close together, part after some steps: on a CPU with native bf16 the
built-in model's answers to these prompts did. That is the arithmetic of splitting, as in every tensor-parallel
server, not a fault of the split, which float32 shows exact."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.app.live_server import (
    LONG_STREAM,
    MODEL,
    LiveServer,
    chat,
    client,
    engine_pids,
    rank_pids,
    running,
    start,
    stop,
    until,
    until_first_text,
    wait_ready,
)

pytestmark = pytest.mark.slow

PROMPTS = ["Hello", "Tell me a long story about a dragon and the village it guarded", "1 2 3 4"]


EXACT = ["--dtype", "float32"]


@pytest.fixture(scope="module")
def whole(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running(EXACT, model_cache, tmp_path_factory.mktemp("tp1") / "log") as live:
        yield live


@pytest.fixture(scope="module")
def split(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    flags = ["--tensor-parallel-size", "2", *EXACT]
    with running(flags, model_cache, tmp_path_factory.mktemp("tp") / "log") as live:
        yield live


def answers(server: LiveServer, stream: bool = False) -> list[str]:
    api = client(server)
    found = []
    for prompt in PROMPTS:
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
        if stream:
            chunks = api.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=24, temperature=0, stream=True
            )
            found.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        else:
            reply = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
            found.append(reply.choices[0].message.content or "")
    return found


def test_two_ranks_give_the_tokens_one_gives(whole: LiveServer, split: LiveServer) -> None:
    assert answers(split) == answers(whole)
    assert answers(split, stream=True) == answers(whole)
    [engine] = engine_pids(split)
    assert len(rank_pids(engine)) == 1  # rank 1, beside the engine process (rank 0)

    # Really split, not a whole copy per rank: each rank caches half the key/value heads.
    def bytes_a_token(target: LiveServer) -> int:
        found = re.search(r"(\d+) bytes a token", target.logs())
        assert found is not None
        return int(found[1])

    assert "tensor parallel: 2 ranks" in split.logs()
    assert bytes_a_token(split) * 2 == bytes_a_token(whole)


@pytest.fixture(scope="module")
def deepseek_v3(builtin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepSeek-V3 checkpoint at toy size (multi-head latent attention, shared and routed experts), with seeded
    weights and the built-in model's DeepSeek tokenizer and template: loaded as any checkpoint directory is."""
    import shutil

    import torch
    from transformers import DeepseekV3ForCausalLM, GenerationConfig

    from tests.app.engine.loop_helpers import tiny_deepseek_v3

    directory = tmp_path_factory.mktemp("deepseek-v3-tiny")
    model = tiny_deepseek_v3(vocab_size=129280)
    assert isinstance(model, DeepseekV3ForCausalLM)
    model.to(torch.bfloat16).save_pretrained(directory)  # type: ignore[arg-type]
    GenerationConfig(bos_token_id=0, eos_token_id=1).save_pretrained(directory)  # type: ignore[no-untyped-call]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(builtin_dir / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def deepseek_v3_fp8(deepseek_v3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint in DeepSeek-V3's shipped FP8 format (tests/app/model/fp8_checkpoint.py), which a CPU
    serves dequantized."""
    from tests.app.model.fp8_checkpoint import write_fp8_checkpoint

    directory = tmp_path_factory.mktemp("deepseek-v3-tiny-fp8")
    write_fp8_checkpoint(deepseek_v3, directory)
    return directory


@pytest.mark.parametrize("weights", ["bf16", "fp8"])
def test_a_deepseek_v3_shape_gives_the_same_tokens_on_two_ranks(
    weights: str, request: pytest.FixtureRequest, model_cache: Path, tmp_path: Path
) -> None:
    deepseek_v3: Path = request.getfixturevalue("deepseek_v3" if weights == "bf16" else "deepseek_v3_fp8")
    found = []
    for size in ("1", "2"):
        flags = ["--model", str(deepseek_v3), "--tensor-parallel-size", size, "--max-model-len", "512", *EXACT]
        with running(flags, model_cache, tmp_path / size) as live:
            api = client(live)
            replies = [
                api.chat.completions.create(
                    model=str(deepseek_v3), messages=[{"role": "user", "content": p}], max_tokens=16, temperature=0
                )
                .choices[0]
                .message.content
                for p in PROMPTS
            ]
            streamed = api.chat.completions.create(
                model=str(deepseek_v3),
                messages=[{"role": "user", "content": PROMPTS[0]}],
                max_tokens=16,
                temperature=0,
                stream=True,
            )
            replies.append("".join(c.choices[0].delta.content or "" for c in streamed if c.choices))
            found.append(replies)
            if weights == "fp8":
                assert "torch.float32 (FP8 checkpoint, 8x8 blocks, dequantized" in live.logs()
    assert found[0] == found[1]
    assert found[0][0] == found[0][-1]  # streamed as answered whole


def test_seeded_choices_agree_across_ranks(whole: LiveServer, split: LiveServer) -> None:
    def sampled(target: LiveServer) -> list[str]:
        reply = client(target).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=16, n=3, seed=11
        )
        return [choice.message.content or "" for choice in reply.choices]

    assert sampled(split) == sampled(whole)


def test_a_cancelled_stream_leaves_the_ranks_serving(split: LiveServer) -> None:
    with httpx.stream("POST", f"{split.base_url}/v1/chat/completions", json=LONG_STREAM, timeout=60) as response:
        until_first_text(response.iter_lines())
    split.wait_for_metric("deepseek_num_requests_running", 0, timeout=10)
    assert chat(split).status_code == 200


def test_sigterm_drains_and_leaves_no_rank_behind(model_cache: Path, tmp_path: Path) -> None:
    server = start(["--tensor-parallel-size", "2"], model_cache, tmp_path / "log")
    try:
        wait_ready(server)
        [engine] = engine_pids(server)
        ranks = rank_pids(engine)
        assert chat(server).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    finally:
        stop(server)
    assert ranks and not [pid for pid in [engine, *ranks] if Path(f"/proc/{pid}").exists()]
    assert "Traceback" not in server.logs()


def test_a_rank_that_dies_takes_the_engine_down_cleanly(model_cache: Path, tmp_path: Path) -> None:
    with running(["--tensor-parallel-size", "2"], model_cache, tmp_path / "log") as server:
        [engine] = engine_pids(server)
        [rank] = rank_pids(engine)
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=LONG_STREAM, timeout=60) as response:
            lines = response.iter_lines()
            until_first_text(lines)
            os.kill(rank, signal.SIGKILL)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["error"]["code"] == "engine_error"
        until(lambda: httpx.get(f"{server.base_url}/healthz").status_code == 503, 30, "503 from /healthz")
        assert not Path(f"/proc/{engine}").exists() or b"zombie" in Path(f"/proc/{engine}/status").read_bytes()
    assert "tensor-parallel rank 1 exited" in server.logs() or "tensor-parallel step failed" in server.logs()


def test_a_size_the_model_cannot_be_split_by_is_refused_in_one_line(model_cache: Path, tmp_path: Path) -> None:
    server = start(["--tensor-parallel-size", "3"], model_cache, tmp_path / "log")
    assert server.process.wait(timeout=60) == 1
    logs = server.logs()
    assert "--tensor-parallel-size 3 (TENSOR_PARALLEL_SIZE): the model has 4 attention heads and 2 key/value" in logs
    assert "Traceback" not in logs
