"""Servers started with other settings, or stopped, crashed and drained: one process per test."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.app.live_server import (
    LONG_STREAM,
    MODEL,
    chat,
    client,
    engine_pids,
    running,
    start,
    stop,
    until,
    until_first_text,
    wait_ready,
)

pytestmark = pytest.mark.slow


# ----- servers started with other settings -----


def test_the_gauges_the_autoscaler_adds_count_every_request_in_the_engine(model_cache: Path, tmp_path: Path) -> None:
    """Five streams on a two-row batch: two running, three waiting. The HPA scales on their sum (the adapter's
    deepseek_num_requests_inflight), so each gauge must hold its half exactly."""
    with running(["--max-batch-size", "2"], model_cache, tmp_path / "log") as server:
        streams = [
            httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=LONG_STREAM, timeout=120)
            for _ in range(5)
        ]
        responses = [stream.__enter__() for stream in streams]
        try:
            server.wait_for_metric("deepseek_num_requests_running", 2, timeout=30)
            server.wait_for_metric("deepseek_num_requests_waiting", 3, timeout=30)
        finally:
            for stream, response in zip(streams, responses, strict=True):
                stream.__exit__(None, None, None)
                assert response.status_code == 200
        server.wait_for_metric("deepseek_num_requests_running", 0, timeout=30)
        server.wait_for_metric("deepseek_num_requests_waiting", 0, timeout=30)


def test_api_keys_guard_v1_but_not_operations(model_cache: Path, tmp_path: Path) -> None:
    with running([], model_cache, tmp_path / "log", env={"API_KEYS": "key-one, key-two"}) as server:
        with pytest.raises(openai.AuthenticationError):
            client(server, key="wrong").models.list()
        missing = httpx.get(f"{server.base_url}/v1/models")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert [m.id for m in client(server, key="key-two").models.list().data] == [MODEL]
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{server.base_url}{path}").status_code == 200


def test_full_queue_answers_429_with_retry_after(model_cache: Path, tmp_path: Path) -> None:
    args = ["--max-batch-size", "1", "--max-queue", "1"]
    with running(args, model_cache, tmp_path / "log") as server:
        streams = []
        try:
            for _ in range(2):  # one running, one waiting
                context = httpx.stream(
                    "POST",
                    f"{server.base_url}/v1/chat/completions",
                    json=LONG_STREAM,
                    timeout=60,
                )
                response = context.__enter__()
                streams.append(context)
                assert response.status_code == 200
            refused = chat(server)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
        finally:
            for context in streams:
                context.__exit__(None, None, None)
        server.wait_for_metric("deepseek_num_requests_running", 0, timeout=10)
        assert chat(server).status_code == 200


def test_sigterm_drains_a_stream_in_flight_then_exits_zero(model_cache: Path, tmp_path: Path) -> None:
    server = start(["--drain-timeout", "20"], model_cache, tmp_path / "log")
    try:
        wait_ready(server)
        payload = {**LONG_STREAM, "max_tokens": 200}  # long enough to be in flight at SIGTERM, short enough to drain
        received: list[str] = []

        def read_stream() -> None:
            with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=payload, timeout=60) as response:
                received.extend(line for line in response.iter_lines() if line)

        reader = threading.Thread(target=read_stream)
        reader.start()
        server.wait_for_metric("deepseek_num_requests_running", 1, timeout=10)
        server.process.send_signal(signal.SIGTERM)
        # "At once" is the signal handler's next turn; polled, so a loaded CI machine delays it rather than fails it.
        until(lambda: httpx.get(f"{server.base_url}/readyz").status_code == 503, 2.0, "503 from /readyz")
        ready = httpx.get(f"{server.base_url}/readyz")
        assert ready.json()["status"] == "draining"
        refused = chat(server)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "draining"
        reader.join(timeout=60)
        assert received[-1] == "data: [DONE]"
        usage_free = [json.loads(line[6:]) for line in received[1:-1]]
        assert usage_free[-1]["choices"][0]["finish_reason"] == "length"
        assert server.process.wait(timeout=30) == 0
    finally:
        stop(server)
    assert '"drain_finished"' in server.logs()


def test_sigterm_while_loading_exits_zero_at_once_and_leaves_no_engine(model_cache: Path, tmp_path: Path) -> None:
    server = start([], model_cache, tmp_path / "log")
    try:
        until(lambda: '"model_load"' in server.logs() and "loading weights" in server.logs(), 60, "weights loading")
        engines = engine_pids(server)
        assert len(engines) == 1  # the engine process is loading the weights now
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 10  # not the 15 s an engine that ignores SIGTERM once cost
        assert not Path(f"/proc/{engines[0]}").exists()  # killed and reaped, not left behind
    finally:
        stop(server)
    assert "Traceback" not in server.logs()


def test_unloadable_model_exits_1_with_one_line(model_cache: Path, tmp_path: Path) -> None:
    server = start(["--model", str(tmp_path / "missing")], model_cache, tmp_path / "log")
    assert server.process.wait(timeout=60) == 1
    logs = server.logs()
    assert "no such directory" in logs
    assert "Traceback" not in logs


def test_engine_crash_fails_streams_cleanly_and_liveness(model_cache: Path, tmp_path: Path) -> None:
    with running([], model_cache, tmp_path / "log") as server:
        engines = engine_pids(server)
        assert len(engines) == 1
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=LONG_STREAM, timeout=60) as response:
            lines = response.iter_lines()
            until_first_text(lines)
            os.kill(engines[0], signal.SIGKILL)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][6:])["error"]
        assert error["code"] == "engine_error"
        assert "engine process exited" in error["message"]
        health = httpx.get(f"{server.base_url}/healthz")
        assert health.status_code == 503
        refused = chat(server)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "unavailable"


def test_drain_timeout_ends_streams_with_an_error_event(model_cache: Path, tmp_path: Path) -> None:
    server = start(["--drain-timeout", "1"], model_cache, tmp_path / "log")
    try:
        wait_ready(server)
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=LONG_STREAM, timeout=60) as response:
            lines = response.iter_lines()
            until_first_text(lines)
            server.process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert "drain timeout" in json.loads(rest[-2][6:])["error"]["message"]
        assert server.process.wait(timeout=30) == 0
    finally:
        stop(server)
    assert "Traceback" not in server.logs()


def test_r1_defaults_apply_to_what_a_request_leaves_out(model_cache: Path, tmp_path: Path) -> None:
    """With DeepSeek-R1's conventions on (as for an R1 checkpoint): temperature 0.6 and top_p 0.95 unless the
    request sets them, and the answer opened with <think> unless the request declines thinking."""
    with running(["--r1-defaults", "true"], model_cache, tmp_path / "log") as server:
        api = client(server)

        def text(**fields: Any) -> tuple[str | None, str | None]:
            reply = api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=16, seed=7, **fields
            )
            message = reply.choices[0].message
            return getattr(message, "reasoning_content", None), message.content

        default = text()
        assert default == text(temperature=0.6, top_p=0.95)  # the same draws: the defaults are R1's
        assert default != text(temperature=1.0, top_p=1.0)  # a request's own values win
        reasoning, content = default
        assert reasoning and content == ""  # opened with <think>: the random weights never close it
        declined, answer = text(extra_body={"chat_template_kwargs": {"thinking": False}})
        assert declined is None and answer
