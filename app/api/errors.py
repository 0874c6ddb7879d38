"""One error shape for every failure, OpenAI's: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def model_loading() -> APIError:
    """The one "still loading" refusal (the gate middleware's, and the handlers' own check behind it)."""
    return APIError(
        503,
        "the model is still loading; retry shortly",
        type="server_error",
        code="loading",
        headers={"Retry-After": "5"},
    )


class GenerationError(APIError):
    """The engine ended a request with an error (its batch step failed, or the engine died). Raised by the stream
    of engine events; a response that has not started yet answers 503 with it, a started stream ends with it as
    its last event (framing.event_stream)."""

    def __init__(self, reason: str) -> None:
        super().__init__(503, f"generation failed: {reason}", type="server_error", code="engine_error")


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def body_of(error: APIError) -> dict[str, Any]:
    return error_body(error.message, error.type, error.param, error.code)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(body_of(error), status_code=error.status, headers=error.headers)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
    where = _location(tuple(first.get("loc", ())))
    message = str(first["msg"]).removeprefix("Value error, ")
    if first.get("type") == "missing" and where:
        message = "this field is required"
    if first.get("type") == "model_attributes_type" or (not where and "dict" in message):
        return "the request body must be a JSON object", None
    return (f"{where}: {message}" if where else message), (where or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(APIError(400, message, param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, str(exc.detail), code=code, headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", extra={"event": "unhandled_error"})
        return error_response(APIError(500, "internal server error", type="server_error", code="internal_error"))
