"""Liveness, readiness and metrics: always open, even when API keys are set."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app.api.deps import RuntimeDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(runtime: RuntimeDep) -> JSONResponse:
    """Alive: 200 while the process can still serve (loading counts); 503 once loading failed or the engine died."""
    failure = runtime.failure
    if failure:
        return JSONResponse({"status": "failed", "reason": failure}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Ready: 200 only when the model is loaded and the server is not draining."""
    if runtime.ready:
        return JSONResponse({"status": "ready"})
    if runtime.draining:
        state = "draining"
    elif runtime.failure:
        state = "failed"
    else:
        state = "loading"
    return JSONResponse({"status": state}, status_code=503)


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
