"""The server as a user meets it: a real `python -m app` process called with the official openai client.

One server with default settings serves every test here; tests that need other settings, or that stop the
server, are in test_server_lifecycle.py."""

from __future__ import annotations

import json
import math
import re
import socket
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from app.metrics import METRICS, PROMPT_TOKENS
from tests.app.live_server import (
    LONG_PLAIN,
    LONG_STREAM,
    MODEL,
    LiveServer,
    chat,
    client,
    engine_pids,
    until_first_text,
)

pytestmark = pytest.mark.slow


# ----- the OpenAI API through the official client -----


def test_models_lists_the_served_model(server: LiveServer) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion_returns_text_and_usage(server: LiveServer) -> None:
    response = client(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, temperature=0
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("length", "stop")
    assert response.usage is not None
    assert response.usage.prompt_tokens > 0
    assert 1 <= response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_temperature_zero_twice_gives_identical_text(server: LiveServer) -> None:
    api = client(server)
    texts = {
        api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Repeat after me"}], max_tokens=16, temperature=0
        )
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(texts) == 1


def test_same_seed_gives_identical_samples(server: LiveServer) -> None:
    api = client(server)

    def sample(seed: int) -> str | None:
        return (
            api.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Surprise me"}],
                max_tokens=16,
                temperature=1.0,
                top_p=0.9,
                seed=seed,
            )
            .choices[0]
            .message.content
        )

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_streamed_chat_matches_the_whole_answer_and_reports_usage(server: LiveServer) -> None:
    api = client(server)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Stream this"}]
    whole = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    chunks = list(
        api.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12


def test_stream_ends_with_done_sentinel(server: LiveServer) -> None:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=payload, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_completions_plain_and_streamed(server: LiveServer) -> None:
    api = client(server)
    whole = api.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0)
    assert whole.choices[0].text
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 10
    streamed = api.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text


def test_stop_string_ends_the_answer_before_it(server: LiveServer) -> None:
    api = client(server)
    full = api.completions.create(model=MODEL, prompt="The stop test", max_tokens=24, temperature=0).choices[0].text
    stop = full[6:9]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    cut = api.completions.create(model=MODEL, prompt="The stop test", max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = api.completions.create(
        model=MODEL, prompt="The stop test", max_tokens=24, temperature=0, stop=[stop], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == full[: full.index(stop)]


def test_thinking_output_arrives_as_reasoning_content(server: LiveServer) -> None:
    # With thinking on, DeepSeek's template opens <think> in the prompt: until the model closes it, all text is
    # reasoning. The built-in model's random weights never close it, so everything lands in reasoning_content.
    body = {"chat_template_kwargs": {"thinking": True}, "temperature": 0, "max_tokens": 8}
    answer = chat(server, **body).json()
    whole = answer["choices"][0]["message"]
    assert whole["reasoning_content"]
    assert whole["reasoning"] == whole["reasoning_content"]  # vLLM's newer name beside DeepSeek's
    assert whole["content"] == ""
    assert "</think>" not in whole["reasoning_content"]  # never closed: every token was reasoning
    assert answer["usage"]["completion_tokens_details"] == {"reasoning_tokens": answer["usage"]["completion_tokens"]}
    api = client(server)
    chunks = list(
        api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"chat_template_kwargs": {"thinking": True}},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning == whole["reasoning_content"]
    assert reasoning == "".join(getattr(d, "reasoning", None) or "" for d in deltas)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == usage.completion_tokens == 8


N_PROMPT = "Count the ways a long prompt can be shared between the choices of one request, one by one, slowly"


def test_n_choices_are_seeded_by_index_and_share_one_prompt(server: LiveServer) -> None:
    api = client(server)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": N_PROMPT}]
    hits = server.metric("deepseek_prefix_cache_hits_total")
    reply = api.chat.completions.create(model=MODEL, messages=messages, n=4, seed=100, max_tokens=8)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) > 1  # different draws
    assert reply.usage is not None and reply.usage.completion_tokens == 4 * 8
    prompt_tokens = reply.usage.prompt_tokens
    # The prompt was computed once: the other three choices took its full blocks from the prefix cache.
    assert server.metric("deepseek_prefix_cache_hits_total") - hits >= 3 * ((prompt_tokens - 1) // 16) * 16
    # Choice i is what one request seeded with seed + i gets.
    for index in (0, 3):
        one = api.chat.completions.create(model=MODEL, messages=messages, seed=100 + index, max_tokens=8)
        assert one.choices[0].message.content == texts[index]
    # Streamed, each choice reassembles by its index to the same text.
    streamed: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    usage = None
    for chunk in api.chat.completions.create(
        model=MODEL,
        messages=messages,
        n=4,
        seed=100,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    ):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason is not None:
                finishes[choice.index] = choice.finish_reason
    assert [streamed[i] for i in range(4)] == texts
    assert finishes == {i: "length" for i in range(4)}
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, 32)


def test_completions_take_n_too(server: LiveServer) -> None:
    reply = client(server).completions.create(model=MODEL, prompt=N_PROMPT, n=3, seed=5, max_tokens=6)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage is not None and reply.usage.completion_tokens == 18
    one = client(server).completions.create(model=MODEL, prompt=N_PROMPT, seed=7, max_tokens=6)
    assert one.choices[0].text == reply.choices[2].text


def test_chat_logprobs_name_each_token_and_its_likeliest_alternatives(server: LiveServer) -> None:
    api = client(server)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]
    reply = api.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert reply.usage is not None and len(content) == reply.usage.completion_tokens == 6
    for item in content:
        assert len(item.top_logprobs) == 5
        tops = [t.logprob for t in item.top_logprobs]
        assert tops == sorted(tops, reverse=True) and all(lp <= 0 for lp in tops)
        assert sum(math.exp(lp) for lp in tops) <= 1 + 1e-6
        # Greedy: the chosen token is the likeliest, with the same log probability.
        assert item.token == item.top_logprobs[0].token and item.logprob == pytest.approx(tops[0])
        assert item.bytes == list(item.token.encode("utf-8"))
    # Streamed, the same items arrive with the chunks, in order.
    streamed = [
        item
        for chunk in api.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5, stream=True
        )
        for c in chunk.choices
        if c.logprobs is not None and c.logprobs.content
        for item in c.logprobs.content
    ]
    assert [(i.token, i.logprob) for i in streamed] == [(i.token, i.logprob) for i in content]
    # Without top_logprobs: each token's own only; without logprobs: none.
    bare = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=3, temperature=0, logprobs=True)
    assert bare.choices[0].logprobs is not None and bare.choices[0].logprobs.content is not None
    assert [i.top_logprobs for i in bare.choices[0].logprobs.content] == [[], [], []]
    plain = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=3, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_take_the_legacy_shape(server: LiveServer) -> None:
    reply = client(server).completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0, logprobs=3)
    scored = reply.choices[0].logprobs
    assert scored is not None and scored.tokens is not None and scored.token_logprobs is not None
    assert scored.top_logprobs is not None and scored.text_offset is not None
    assert len(scored.tokens) == len(scored.token_logprobs) == len(scored.top_logprobs) == 5
    assert all(len(top) <= 3 for top in scored.top_logprobs)  # two pieces may decode to the same text
    assert scored.text_offset == [sum(len(t) for t in scored.tokens[:i]) for i in range(5)]
    for token, logprob, top in zip(scored.tokens, scored.token_logprobs, scored.top_logprobs, strict=True):
        assert top[token] == pytest.approx(logprob) and logprob == pytest.approx(max(top.values()))


def test_an_answer_without_reasoning_counts_no_reasoning_tokens(server: LiveServer) -> None:
    answer = chat(server, temperature=0, max_tokens=6).json()
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}
    reply = client(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0
    )
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 0


# ----- every kind of bad request is a 400 in OpenAI's error shape -----

BAD_REQUESTS: list[tuple[str, object, str]] = [
    ("not json", b"{bad", "not valid JSON"),
    ("not an object", [1, 2], "must be a JSON object"),
    ("missing messages", {"model": MODEL}, "messages"),
    (
        "wrong type",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"},
        "max_tokens",
    ),
    (
        "max_tokens zero",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        "max_tokens",
    ),
    ("bad role", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("unknown model", {"model": "gpt-7", "messages": [{"role": "user", "content": "x"}]}, "gpt-7"),
    (
        "n over the cap",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 1000},
        "less than or equal to 128",
    ),
    (
        "temperature 3",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 3},
        "temperature",
    ),
    (
        "over max-model-len",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000},
        "max-model-len",
    ),
    ("empty messages", {"model": MODEL, "messages": []}, "messages"),
    (
        "five stop strings",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": list("abcde")},
        "stop",
    ),
]


@pytest.mark.parametrize(("case", "body", "mentions"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_chat_requests_get_400_naming_the_problem(
    server: LiveServer, case: str, body: object, mentions: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert mentions in error["message"]


def test_prompt_longer_than_max_model_len_is_refused_not_clamped(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": MODEL, "prompt": "word " * 5000, "max_tokens": 1},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("token", [-1, 10**9])
def test_token_ids_outside_the_vocabulary_are_refused(server: LiveServer, token: int) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": MODEL, "prompt": [1, 2, token], "max_tokens": 1},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "prompt" and f"token id {token} is outside the vocabulary" in error["message"]


def test_oversized_body_is_refused(server: LiveServer) -> None:
    body = json.dumps({"model": MODEL, "prompt": "x" * (5 * 1024 * 1024)})
    response = httpx.post(f"{server.base_url}/v1/completions", content=body, timeout=30)
    assert response.status_code == 400
    assert "larger than" in response.json()["error"]["message"]


def test_client_errors_through_the_openai_client(server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 400


def test_unknown_route_and_method_use_the_error_shape(server: LiveServer) -> None:
    assert httpx.get(f"{server.base_url}/v2/nothing").json()["error"]["code"] == "not_found"
    assert httpx.delete(f"{server.base_url}/v1/models").status_code == 405


# ----- operations: health, readiness, metrics, logs -----


def test_health_ready_and_metrics(server: LiveServer) -> None:
    assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.base_url}/readyz").json() == {"status": "ready"}
    chat(server)
    text = httpx.get(f"{server.base_url}/metrics").text
    # After one chat, every declared metric has a series on the live server.
    for spec in METRICS:
        name = f"{spec.name}_bucket" if spec.kind == "histogram" else spec.name
        assert f"{name}{{" in text, name
    assert server.metric(PROMPT_TOKENS.name) > 0
    assert 'endpoint="/v1/chat/completions"' in text
    # The cache's shape, as the engine logged its capacity when it loaded.
    info = next(line for line in text.splitlines() if line.startswith("deepseek_cache_config_info{"))
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info))
    logged = re.search(r"KV cache: (\d+) tokens", server.logs())
    assert logged is not None
    assert labels["block_size"] == "16" and labels["enable_prefix_caching"] == "true"
    assert int(labels["block_size"]) * int(labels["num_blocks"]) == int(logged[1])


def test_only_the_engine_process_loads_torch(server: LiveServer) -> None:
    """The API process keeps torch out (app/engine/spec.py): torch and the model classes cost it ~500 MiB resident
    for nothing, and the built-in model is built in a process of its own. The engine process is the one with it."""

    def maps_torch(pid: int) -> bool:
        return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()

    assert not maps_torch(server.process.pid)
    assert [pid for pid in engine_pids(server) if maps_torch(pid)], "no engine process with torch loaded"


def test_one_json_log_line_per_request(server: LiveServer) -> None:
    before = len(server.request_logs("/v1/chat/completions"))
    chat(server, max_tokens=3)
    requests = server.wait_for_request_logs("/v1/chat/completions", before + 1)
    assert len(requests) == before + 1  # one line, not one per token or per layer
    last = requests[-1]
    assert last["status"] == 200
    assert last["completion_tokens"] == 3
    assert last["prompt_tokens"] > 0
    assert last["latency_ms"] > 0


# ----- cancellation: a client that goes away frees its slot -----


def test_disconnected_stream_is_cancelled(server: LiveServer) -> None:
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=LONG_STREAM, timeout=60) as response:
        lines = response.iter_lines()  # kept: a dropped or abandoned line iterator closes the response
        until_first_text(lines)
        assert server.metric("deepseek_num_requests_running") == 1
    server.wait_for_metric("deepseek_num_requests_running", 0, timeout=5)


def test_disconnected_plain_request_is_cancelled(server: LiveServer) -> None:
    body = json.dumps(LONG_PLAIN).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        server.wait_for_metric("deepseek_num_requests_running", 1, timeout=5)
    server.wait_for_metric("deepseek_num_requests_running", 0, timeout=5)


# ----- inputs found by review that once took the engine down or leaked a 500 -----


def test_tiny_temperature_is_greedy_and_the_engine_survives(server: LiveServer) -> None:
    greedy = chat(server, temperature=0, max_tokens=6).json()["choices"][0]["message"]["content"]
    tiny = chat(server, temperature=1e-45, max_tokens=6)
    assert tiny.status_code == 200
    assert tiny.json()["choices"][0]["message"]["content"] == greedy
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"seed": 2**64}, "seed"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "tokenized"),
        ({"chat_template_kwargs": {"chat_template": "{{ '' }}"}}, "chat_template"),
        ({"stop": ["x" * 300]}, "stop"),
    ],
    ids=["seed out of range", "lone surrogate", "client template", "huge stop string"],
)
def test_more_bad_requests_are_400(server: LiveServer, body: dict[str, object], mentions: str) -> None:
    response = chat(server, **body)
    assert response.status_code == 400, response.text
    assert mentions in response.json()["error"]["message"]
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200


def test_think_tag_in_a_user_message_does_not_hide_the_answer(server: LiveServer) -> None:
    message = chat(server, messages=[{"role": "user", "content": "tell me about <think>"}], temperature=0).json()
    assert message["choices"][0]["message"]["content"]
    assert "reasoning_content" not in message["choices"][0]["message"]


def test_plain_request_whose_client_leaves_is_logged_499(server: LiveServer) -> None:
    before = len(server.request_logs("/v1/chat/completions"))
    with pytest.raises(httpx.TimeoutException):
        # 2 s: long enough for a loaded machine to take the request, far shorter than its 3,000 tokens
        httpx.post(f"{server.base_url}/v1/chat/completions", json=LONG_PLAIN, timeout=2.0)
    server.wait_for_metric("deepseek_num_requests_running", 0, timeout=15)
    requests = server.wait_for_request_logs("/v1/chat/completions", before + 1)
    assert requests[-1]["status"] == 499
    assert "Traceback" not in server.logs()
