"""Request-scoped access to the runtime, as FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.errors import model_loading
from app.runtime import Runtime, Served


# Async although they do no I/O: FastAPI runs a plain `def` dependency in its thread pool, and that hop (with the
# interpreter lock to win back from the event loop) cost every request more than the whole route.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_served(request: Request) -> Served:
    served = (await get_runtime(request)).served
    if served is None:  # the gate middleware already refuses this; kept so handlers can trust the type
        raise model_loading()
    return served


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ServedDep = Annotated[Served, Depends(get_served)]
