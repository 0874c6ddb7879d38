"""The app factory: routes, one error shape, middleware, and the model loaded in the background at startup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.middleware import AccessLogMiddleware, AuthMiddleware, BodyLimitMiddleware, GateMiddleware
from app.api.routes import chat, completions, health, models
from app.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start_loading()  # in the background: /healthz answers while the weights load
        yield
        runtime.close()

    app = FastAPI(
        title="DeepSeek inference server",
        description="OpenAI-compatible API for one DeepSeek model.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)

    for router in (health.router, models.router, chat.router, completions.router):
        app.include_router(router)

    # Added innermost first: the last one added runs first.
    app.add_middleware(GateMiddleware, runtime=runtime)
    app.add_middleware(BodyLimitMiddleware, max_bytes=runtime.settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, keys=runtime.settings.api_keys)  # before any body is read
    app.add_middleware(AccessLogMiddleware, runtime=runtime)
    return app
