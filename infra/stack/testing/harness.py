"""Runs `infra/__main__.py` under `pulumi.runtime.set_mocks`, configured from a stack file as the CLI would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import runpy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import ROOT, get_root_resource

from stack.testing.docker_stand_in import docker_ping_stand_in
from stack.testing.mocks import RecordedCall, RecordedOptions, RecordedResource, RecordingMocks

REPO_ROOT = Path(__file__).resolve().parents[3]
PROGRAM = REPO_ROOT / "infra" / "__main__.py"
PROJECT = "deepseek-inference"
# Secrets the stack files cannot hold in clear; tests stand in for `pulumi config set --secret`.
TEST_SECRETS: dict[str, str] = {f"{PROJECT}:apiKeys": "test-key-1,test-key-2"}


@dataclass
class ProgramRun:
    stack: str
    resources: list[RecordedResource]
    calls: list[RecordedCall]
    options: dict[str, RecordedOptions] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)

    def options_of(self, resource: RecordedResource) -> RecordedOptions:
        return self.options[f"{resource.type} {resource.name}"]

    def of_type(self, typ: str) -> list[RecordedResource]:
        return [resource for resource in self.resources if resource.type == typ]

    def one(self, typ: str, name: str | None = None) -> RecordedResource:
        matches = [resource for resource in self.of_type(typ) if name is None or resource.name == name]
        if len(matches) != 1:
            raise AssertionError(f"expected one {typ} named {name!r}, found {[m.name for m in matches]}")
        return matches[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "resources": [resource.to_json() for resource in self.resources],
            "outputs": self.outputs,
        }


def stack_settings(stack: str, root: Path = REPO_ROOT) -> dict[str, Any]:
    """The `config:` block of Pulumi.<stack>.yaml, keys namespaced, values as parsed YAML."""
    document = yaml.safe_load((root / f"Pulumi.{stack}.yaml").read_text())
    settings: dict[str, Any] = {}
    for key, value in (document.get("config") or {}).items():
        settings[key if ":" in key else f"{PROJECT}:{key}"] = value
    return settings


def to_cli_value(value: Any) -> str:
    """How the Pulumi CLI hands a config value to the program: strings as-is, everything else as JSON text."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def stack_config(
    stack: str,
    overrides: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
    root: Path = REPO_ROOT,
) -> tuple[dict[str, str], list[str]]:
    """The config map and secret keys the CLI would pass for `stack`, with overrides (None deletes a key).

    Keys without a namespace belong to the project. `secure:` values in the file are replaced by `secrets`.
    """
    settings = stack_settings(stack, root)
    for key, value in (overrides or {}).items():
        full_key = key if ":" in key else f"{PROJECT}:{key}"
        if value is None:
            settings.pop(full_key, None)
        else:
            settings[full_key] = value
    secret_values = {
        key if ":" in key else f"{PROJECT}:{key}": value for key, value in (secrets or TEST_SECRETS).items()
    }
    config: dict[str, str] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            if key in secret_values:
                config[key] = secret_values[key]
            continue
        config[key] = to_cli_value(value)
    for key, value in secret_values.items():
        config.setdefault(key, value)
    return config, sorted(secret_values)


def _ensure_event_loop() -> None:
    """pulumi.runtime.test runs on the thread's current event loop; code that ran asyncio.run() before (another
    test, a tool) leaves the main thread without one."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(
    config: Mapping[str, str],
    *,
    stack: str,
    secret_keys: Iterable[str] = (),
    mocks: RecordingMocks | None = None,
    program: Path | Callable[[], None] = PROGRAM,
    project: str = PROJECT,
    docker: bool = True,
    preview: bool = False,
) -> ProgramRun:
    """Runs the program (a file, or a function for unit tests of one component) once under mocks.

    `docker`: a stand-in Docker engine answers the program's probe (the mocks never build an image); False leaves
    the machine's own DOCKER_HOST, engine or none. `preview`: run as `pulumi preview` does (outputs the engine does
    not know yet are unknown). Exceptions the program raises (e.g. `pulumi.RunError`) propagate.
    """
    mocks = mocks or RecordingMocks(region=config.get("aws:region", "us-west-2"))
    _ensure_event_loop()
    ROOT.set(None)
    pulumi.runtime.set_all_config(dict(config), list(secret_keys))
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=preview)
    run = ProgramRun(stack=stack, resources=mocks.resources, calls=mocks.calls, options=mocks.options)

    async def collect_outputs() -> None:
        root = get_root_resource()
        exported: dict[str, Any] = dict(getattr(root, "outputs", {}))
        for key, value in exported.items():
            output = pulumi.Output.from_input(value)
            run.outputs[key] = await output.future()
            if await output.is_secret():
                run.secret_outputs.add(key)

    def body() -> Any:
        if callable(program):
            program()
        else:
            runpy.run_path(str(program), run_name="__main__")
        return collect_outputs()

    run_under_mocks: Callable[[Callable[[], Any]], Callable[[], None]] = pulumi.runtime.test
    with _recording_requests(), docker_ping_stand_in() if docker else contextlib.nullcontext():
        run_under_mocks(body)()
    return run


@contextlib.contextmanager
def _recording_requests() -> Iterator[None]:
    """Lets RecordingMocks see each RegisterResource request (custom timeouts, dependencies), which the mock
    monitor does not pass on."""
    original: Callable[[MockMonitor, Any], Any] = MockMonitor.RegisterResource

    def register(monitor: MockMonitor, request: Any) -> Any:
        if isinstance(monitor.mocks, RecordingMocks):
            monitor.mocks.record_request(request)
        return original(monitor, request)

    setattr(MockMonitor, "RegisterResource", register)  # noqa: B010 (mypy refuses assigning to a method)
    try:
        yield
    finally:
        setattr(MockMonitor, "RegisterResource", original)  # noqa: B010


def run_stack(
    stack: str,
    overrides: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
    mocks: RecordingMocks | None = None,
    docker: bool = True,
    preview: bool = False,
) -> ProgramRun:
    """`run_program` configured from Pulumi.<stack>.yaml."""
    config, secret_keys = stack_config(stack, overrides, secrets)
    return run_program(config, stack=stack, secret_keys=secret_keys, mocks=mocks, docker=docker, preview=preview)
