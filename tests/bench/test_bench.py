"""The benchmark as a user runs it: one command starts a server, measures it and writes its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.engine.types import CacheConfig, KVStats
from app.metrics import Metrics
from bench.__main__ import percentile
from bench.engine_figures import kv_tokens_held
from bench.local_server import resident_mib

ROOT = Path(__file__).resolve().parents[2]


def test_percentile_picks_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 51.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


def test_resident_memory_counts_this_process() -> None:
    assert 10 < resident_mib(os.getpid()) < 100_000


def test_bench_runs_against_a_local_server_and_writes_figures(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--runs", "2", "--concurrency", "3", "--max-tokens", "4", "--json", str(out)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "throughput ratio" in result.stdout
    assert "constrained ratio" in result.stdout
    runs = json.loads(out.read_text())
    assert len(runs) == 2
    for run in runs:
        assert run["failed"] == 0
        assert run["concurrency"] == 3
        assert run["sequential_tokens_per_s"] > 0
        assert run["concurrent_tokens_per_s"] > 0
        assert run["lone_ttft_ms"] > 0
        assert run["constrained_tokens_per_s"] > 0 and run["constrained_ratio"] > 0
    assert 0 < runs[-1]["server_resident_mib"] < 1536  # 1,024 MiB on the 2-core dev machine


def test_bench_refuses_bad_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--concurrency", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--concurrency" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_memory_figure_reads_the_kv_cache_the_server_exposes() -> None:
    """bench.engine_figures reads the blocks held from what app.metrics writes: usage × num_blocks × block_size."""
    server = Metrics("m")
    server.model_loaded(CacheConfig(num_blocks=100, block_size=16, prefix_caching=True))
    server.on_kv(KVStats(usage=0.25, prefix_queries=0, prefix_hits=0, preemptions=0))
    assert kv_tokens_held(server.render().decode()) == 400
    with pytest.raises(RuntimeError, match="no KV cache usage"):
        kv_tokens_held("deepseek_model_loaded 1\n")


def test_the_decode_attention_comparison_names_the_path_the_engine_takes() -> None:
    import torch

    from bench.decode_attention import compare

    many = compare(torch.bfloat16, 2, 2, 16, 16, rows=32, keys=60)
    assert "SDPA" in many and many.endswith("engine: matmuls")
    assert compare(torch.float32, 2, 2, 16, 16, rows=2, keys=60).endswith("engine: SDPA")
