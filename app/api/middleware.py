"""Pure ASGI middleware (no BaseHTTPMiddleware: it would break streaming and disconnect detection).

Outermost first: AccessLog (one JSON line and the request metrics per request) → Auth (/v1 only) → BodyLimit →
Gate (/v1 only: 503 while loading or draining; counts requests in flight for the drain).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import APIError, error_response, model_loading
from app.api.request_record import record_in
from app.runtime import Runtime

logger = logging.getLogger("app.access")

API_PREFIX = "/v1/"


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            seconds = time.perf_counter() - started
            record = record_in(scope.setdefault("state", {}))
            status = record.status if record.status is not None else status
            prompt_tokens, completion_tokens = record.prompt_tokens, record.completion_tokens
            path: str = scope["path"]
            if path.startswith(API_PREFIX):
                self.runtime.metrics.request_finished(path, status, seconds, prompt_tokens, completion_tokens)
            if path not in ("/healthz", "/readyz", "/metrics") or status >= 400:
                logger.info(
                    "request",
                    extra={
                        "event": "request",
                        "method": scope["method"],
                        "path": path,
                        "status": status,
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "latency_ms": round(seconds * 1000, 1),
                        "stream": record.stream,
                    },
                )


class BodyLimitMiddleware:
    """Refuses bodies over the limit with OpenAI's 400, whether declared (Content-Length) or streamed (chunked).

    The body is read here, up to the limit, and handed to the app from memory: an error raised while the app
    itself reads would reach the client as FastAPI's generic parse error instead."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the app expects

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is larger than {self.max_bytes} bytes (--max-body-bytes)"
        await error_response(APIError(400, message, code="request_too_large"))(scope, receive, send)


class AuthMiddleware:
    """Bearer keys on /v1 routes. Keys are kept hashed and compared in constant time."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._digests or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self._refuse(scope, receive, send, "missing API key: send `Authorization: Bearer <key>`")
            return
        digest = hashlib.sha256(token.strip().encode()).digest()
        if not any(secrets.compare_digest(digest, known) for known in self._digests):
            await self._refuse(scope, receive, send, "invalid API key")
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
        error = APIError(
            401, message, type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
        await error_response(error)(scope, receive, send)


class GateMiddleware:
    """Admits /v1 requests only while the model is ready and the server is not draining; counts them in flight."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        runtime = self.runtime
        refusal: APIError | None = None
        if runtime.draining:
            refusal = APIError(
                503,
                "the server is shutting down; retry on another replica",
                type="server_error",
                code="draining",
                headers={"Connection": "close", "Retry-After": "1"},
            )
        elif runtime.failure:
            refusal = APIError(
                503, f"the server cannot serve: {runtime.failure}", type="server_error", code="unavailable"
            )
        elif runtime.served is None:
            refusal = model_loading()
        if refusal is not None:
            await error_response(refusal)(scope, receive, send)
            return
        runtime.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            runtime.in_flight -= 1
