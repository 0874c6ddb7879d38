"""Request-scoped access to the runtime, as FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.errors import APIError
from app.runtime import Runtime, Served


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_served(request: Request) -> Served:
    served = get_runtime(request).served
    if served is None:  # the gate middleware already refuses this; kept so handlers can trust the type
        raise APIError(503, "the model is still loading; retry shortly", type="server_error", code="loading")
    return served


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ServedDep = Annotated[Served, Depends(get_served)]
