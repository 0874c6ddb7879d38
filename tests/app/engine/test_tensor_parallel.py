"""What every rank must agree on before a step (app/engine/tensor_parallel.py), and which splits are refused
(app.model.loader.check_split). The ranks themselves run in tests/app/test_server_tensor_parallel.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.engine.tensor_parallel import with_fixed_seed
from app.engine.types import SamplingParams
from app.model import hardware
from app.model.builtin import RANDOM_WEIGHTS_MARKER
from app.model.loader import check_split
from app.model.source import ModelLoadError, WeightsSpec


def test_rank_0_fixes_the_seed_of_a_sampled_request_and_leaves_the_others() -> None:
    sampled = with_fixed_seed(SamplingParams(max_tokens=4, temperature=0.8))
    assert sampled.seed is not None and 0 <= sampled.seed < 2**63
    assert with_fixed_seed(SamplingParams(max_tokens=4, seed=5)).seed == 5
    assert with_fixed_seed(SamplingParams(max_tokens=4, temperature=0.0)).seed is None  # greedy draws nothing


def checkpoint(tmp_path: Path, **config: int) -> WeightsSpec:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return WeightsSpec(str(tmp_path), "auto", "cpu", 128, tensor_parallel_size=2)


def test_a_size_that_divides_the_heads_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_count", lambda: 2)
    check_split(checkpoint(tmp_path, num_attention_heads=4, num_key_value_heads=2), "cpu")


@pytest.mark.parametrize(
    ("config", "cores", "named"),
    [
        ({"num_attention_heads": 4, "num_key_value_heads": 1}, 2, "4 attention heads and 1 key/value heads"),
        ({"num_attention_heads": 3}, 2, "3 attention heads and 3 key/value heads"),
        ({"num_attention_heads": 4, "num_key_value_heads": 2}, 1, "only 1 CPU cores are available"),
    ],
)
def test_sizes_the_model_or_machine_cannot_take_are_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, int], cores: int, named: str
) -> None:
    monkeypatch.setattr(hardware, "cpu_count", lambda: cores)
    with pytest.raises(ModelLoadError, match=r"^--tensor-parallel-size 2 \(TENSOR_PARALLEL_SIZE\): ") as raised:
        check_split(checkpoint(tmp_path, **config), "cpu")
    assert named in str(raised.value)


def test_a_random_benchmark_shape_cannot_be_split(tmp_path: Path) -> None:
    spec = checkpoint(tmp_path, num_attention_heads=4)
    (tmp_path / RANDOM_WEIGHTS_MARKER).write_text("{}")
    with pytest.raises(ModelLoadError, match="cannot be split"):
        check_split(spec, "cpu")


def test_a_model_loaded_whole_on_a_rank_is_refused() -> None:
    """transformers loads a whole copy per rank when it does not see the group's size: that is caught, not served."""
    from app.engine import tensor_parallel

    class Whole:
        tp_size = None

    class Halved:
        tp_size = 2

    tensor_parallel.check_split(Halved(), 2)
    with pytest.raises(RuntimeError, match="split 1 ways, not 2"):
        tensor_parallel.check_split(Whole(), 2)


def _report_smallest(rank: int, init_method: str, values: list[int], results: Any) -> None:
    import torch.distributed as dist

    from app.engine import tensor_parallel

    tensor_parallel.join_group(rank, len(values), init_method, "cpu")
    try:
        results.put((rank, tensor_parallel.smallest(values[rank])))
    finally:
        dist.destroy_process_group()


def test_the_ranks_agree_on_the_smallest_kv_budget_any_of_them_can_hold() -> None:
    """Each GPU measures its own free memory after its shard loads; the pools must have the same blocks, so every
    rank takes the smallest (a budget only rank 0 measured could overfill another GPU)."""
    import multiprocessing

    from app.engine.tensor_parallel import free_init_method

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    values = [7 << 30, 5 << 30]
    init_method = free_init_method()
    ranks = [context.Process(target=_report_smallest, args=(r, init_method, values, results)) for r in (0, 1)]
    try:
        for process in ranks:
            process.start()
        for process in ranks:
            process.join(timeout=120)
            assert process.exitcode == 0
    finally:
        for process in ranks:  # a rank stuck in its collective must not outlive the test
            if process.is_alive():
                process.kill()
    assert sorted(results.get(timeout=5) for _ in ranks) == [(0, 5 << 30), (1, 5 << 30)]
