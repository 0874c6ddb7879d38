"""What the access log and the request metrics learn about one /v1 request while it is served.

The route fills it in (prompt and completion tokens, whether it streams, a status that differs from the response's);
the logging middleware reads it when the request is over. One typed record per request, kept in the ASGI scope's
state, instead of loose attributes on `request.state`.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request

_KEY = "deepseek_request_record"


@dataclass
class RequestRecord:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stream: bool = False
    # The status to log and count when it is not the response's: 499 (the client left before its answer was
    # ready), 503 (a stream that failed after its 200 headers went out).
    status: int | None = None


def record_of(request: Request) -> RequestRecord:
    return record_in(request.scope.setdefault("state", {}))


def record_in(state: MutableMapping[str, Any]) -> RequestRecord:
    """The request's record in an ASGI scope's state (created empty when the route set nothing)."""
    record = state.get(_KEY)
    if not isinstance(record, RequestRecord):
        record = state[_KEY] = RequestRecord()
    return record
