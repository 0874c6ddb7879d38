"""A lean streaming client for measurements: time to first token and token counts from the server's usage.

It speaks HTTP/1.1 and SSE directly over asyncio streams, one keep-alive connection per concurrent stream, so the
load generator costs little CPU. On a 2-core machine that shares its cores with the server, httpx spent about a
third of a core on 32 streams, which showed up as server latency.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Result:
    ttft: float  # seconds from sending to the first generated text
    latency: float  # seconds from sending to the end of the stream
    completion_tokens: int
    status: int
    prompt_tokens: int = 0
    # Seconds from sending to each chunk that carried generated text (the gaps between them are what a reader sees).
    token_times: tuple[float, ...] = ()


class Connection:
    """One keep-alive HTTP/1.1 connection; requests on it run one after another."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        parts = urlsplit(base_url)
        self._host = parts.hostname or "127.0.0.1"
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        self._auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # A connection the server closed meanwhile (its keep-alive ran out while this one sat idle) reads as EOF.
        if self._reader is None or self._writer is None or self._writer.is_closing() or self._reader.at_eof():
            if self._writer is not None:
                self._writer.close()
            context = ssl.create_default_context() if self._tls else None
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port, ssl=context)
        return self._reader, self._writer

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()

    async def get_json(self, path: str) -> object:
        return json.loads(await self.get_text(path))

    async def get_text(self, path: str) -> str:
        reader, writer = await self._connect()
        writer.write(self._head("GET", path, 0))
        status, headers = await _read_head(reader)
        body = await _read_body(reader, headers)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        return body.decode()

    async def chat_stream(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        ignore_eos: bool = True,
        first_token: asyncio.Event | None = None,
        response_format: dict[str, object] | None = None,
    ) -> Result:
        """One streamed chat completion; `first_token` (if given) is set when its first generated text arrives.
        With a `response_format` the output is constrained (and EOS, which ends a finished JSON value, is kept)."""
        body: dict[str, object] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": ignore_eos and response_format is None,
        }
        if response_format is not None:
            body["response_format"] = response_format
        payload = json.dumps(body).encode()
        reader, writer = await self._connect()
        started = time.perf_counter()
        writer.write(self._head("POST", "/v1/chat/completions", len(payload)) + payload)
        status, headers = await _read_head(reader)
        if status != 200:
            await _read_body(reader, headers)
            return Result(0.0, time.perf_counter() - started, 0, status)
        ttft = 0.0
        tokens = prompt_tokens = 0
        token_times: list[float] = []
        async for line in _sse_lines(reader, headers):
            if line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
                prompt_tokens = int(chunk["usage"]["prompt_tokens"])
            choices = chunk.get("choices") or []
            if choices:
                delta = choices[0].get("delta", {})
                if delta.get("content") or delta.get("reasoning_content"):
                    token_times.append(time.perf_counter() - started)
                    ttft = ttft or token_times[-1]
                    if first_token is not None:
                        first_token.set()
        return Result(ttft, time.perf_counter() - started, tokens, 200, prompt_tokens, tuple(token_times))

    def _head(self, method: str, path: str, length: int) -> bytes:
        return (
            f"{method} {self._prefix}{path} HTTP/1.1\r\nHost: {self._host}\r\n{self._auth}"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        ).encode()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return b"".join(chunks)
        chunks.append(data[:-2])


async def _sse_lines(reader: asyncio.StreamReader, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    """The `data: ...` lines of an event stream sent with chunked transfer encoding (or a fixed length)."""
    pending = b""
    if headers.get("transfer-encoding", "").lower() != "chunked":
        pending = await _read_body(reader, headers)
        for line in pending.split(b"\n"):
            if line.startswith(b"data: "):
                yield line.rstrip(b"\r")
        return
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            break
        pending += data[:-2]
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.startswith(b"data: "):
                yield line.rstrip(b"\r")
