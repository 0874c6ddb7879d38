"""The gate around /v1 routes, in-process: 503 while loading, draining or failed; health routes tell which."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.testclient import TestClient

from app.api.app import create_app
from app.runtime import Runtime
from app.settings import Settings


def app_without_model(**settings: object) -> tuple[Runtime, TestClient]:
    # No `with TestClient(...)`: the lifespan (which loads the model) does not run, so the server stays "loading".
    runtime = Runtime(Settings(**settings))  # type: ignore[arg-type]
    return runtime, TestClient(create_app(runtime))


def test_v1_routes_answer_503_while_the_model_loads() -> None:
    _, client = app_without_model()
    response = client.get("/v1/models")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "loading"
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (503, "loading")


def test_draining_refuses_new_requests_and_closes_the_connection() -> None:
    runtime, client = app_without_model()
    runtime.draining = True
    response = client.post("/v1/chat/completions", json={})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "draining"
    assert response.headers["connection"] == "close"
    assert client.get("/readyz").json()["status"] == "draining"


def test_failed_load_makes_liveness_fail() -> None:
    runtime, client = app_without_model()
    runtime.load_error = "the weights could not be loaded"
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["reason"] == "the weights could not be loaded"
    assert client.get("/v1/models").json()["error"]["code"] == "unavailable"


def test_keys_are_checked_before_the_gate() -> None:
    _, client = app_without_model(api_keys=("secret",))
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer secret"}).status_code == 503
    assert client.get("/healthz").status_code == 200


def test_declared_large_body_is_refused_before_reading_it() -> None:
    _, client = app_without_model(max_body_bytes=2048)
    response = client.post("/v1/completions", content=b"x" * 4096, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "request_too_large"


def test_streamed_large_body_is_refused_with_the_same_error() -> None:
    _, client = app_without_model(max_body_bytes=2048)

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"x" * 1024

    response = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "request_too_large"
