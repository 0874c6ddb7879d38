"""Every component registers its outputs under camelCase keys, each the camelCase of the attribute it holds."""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic.alias_generators import to_camel

STACK = Path(__file__).resolve().parents[2] / "infra" / "stack"
CAMEL = r"[a-z][a-zA-Z0-9]*"


def _components() -> dict[str, ast.ClassDef]:
    found: dict[str, ast.ClassDef] = {}
    for path in sorted(STACK.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(base) == "pulumi.ComponentResource" for base in node.bases
            ):
                found[f"{path.relative_to(STACK)}:{node.name}"] = node
    return found


def _registered(component: ast.ClassDef) -> list[ast.Dict]:
    return [
        call.args[0]
        for call in ast.walk(component)
        if isinstance(call, ast.Call)
        and ast.unparse(call.func) == "self.register_outputs"
        and call.args
        and isinstance(call.args[0], ast.Dict)
    ]


def test_every_component_registers_its_outputs_once() -> None:
    components = _components()
    assert len(components) >= 13  # the AWS and the Kubernetes layers' components
    assert {name: len(_registered(node)) for name, node in components.items() if len(_registered(node)) != 1} == {}


def test_output_keys_are_the_camel_case_of_their_attributes() -> None:
    mismatched: list[str] = []
    for name, component in _components().items():
        for outputs in _registered(component):
            for key, value in zip(outputs.keys, outputs.values, strict=True):
                assert isinstance(key, ast.Constant) and isinstance(key.value, str), f"{name}: a key is not a literal"
                attribute = ast.unparse(value).removeprefix("self.")
                if key.value != to_camel(attribute):
                    mismatched.append(f"{name}: {key.value!r} holds self.{attribute}")
    assert mismatched == []
