"""The generated stack-config reference: every field documented, every key the stack files use listed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import Field
from pydantic.fields import FieldInfo
from stack.config import reference
from stack.config.base import ConfigSection
from stack.config.loader import OBJECT_KEYS, StackConfig

ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = "deepseek-inference:"


def _sections(model: type[Any], seen: set[type[Any]]) -> None:
    """Every ConfigSection class reachable from `model`'s fields (through unions and lists)."""
    for info in model.model_fields.values():
        stack = [info.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, ConfigSection) and annotation not in seen:
                seen.add(annotation)
                _sections(annotation, seen)
            stack.extend(getattr(annotation, "__args__", ()))


def test_every_config_field_has_a_description() -> None:
    sections: set[type[Any]] = set()
    _sections(StackConfig, sections)
    assert len(sections) >= 20  # every section of the AWS and Kubernetes layers
    missing = [
        f"{section.__name__}.{name}"
        for section in sections
        for name, info in section.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert missing == []


def _stack_file_keys(value: Any, path: str) -> set[str]:
    if isinstance(value, dict) and set(value) == {"secure"}:
        return set()  # an encrypted value (`pulumi config set --secret`): the key is its parent
    if isinstance(value, dict):
        keys: set[str] = set()
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else key
            keys |= {child_path} | _stack_file_keys(child, child_path)
        return keys
    if isinstance(value, list):
        return {key for item in value for key in _stack_file_keys(item, f"{path}[]")}
    return set()


@pytest.mark.parametrize("stack_file", ["Pulumi.dev.yaml", "Pulumi.prod.yaml"])
def test_every_key_a_stack_file_sets_is_in_the_reference(stack_file: str) -> None:
    config = yaml.safe_load((ROOT / stack_file).read_text())["config"]
    used: set[str] = set()
    for key, value in config.items():
        top = key.removeprefix(NAMESPACE)
        used |= {top} | _stack_file_keys(value, top)
    documented = {key.path for key in reference.documented_keys()} | set(OBJECT_KEYS)
    assert used - documented == set()
    assert {"aws:region", "network.zones[].privateSubnetCidr", "inference.service.loadBalancerSourceRanges"} <= used


def test_an_encrypted_secret_in_a_stack_file_counts_as_its_key() -> None:
    stack_file = {"deepseek-inference:apiKeys": {"secure": "v1:abc"}, "deepseek-inference:cluster": {"name": "x"}}
    used = {key.removeprefix(NAMESPACE) for key in stack_file}
    for key, value in stack_file.items():
        used |= _stack_file_keys(value, key.removeprefix(NAMESPACE))
    assert used == {"apiKeys", "cluster", "cluster.name"}
    assert used <= {key.path for key in reference.documented_keys()} | set(OBJECT_KEYS)


def test_a_nested_default_comes_from_the_parent_default() -> None:
    keys = {key.path: key for key in reference.documented_keys()}
    # NodePoolConfig itself has no default size: each pool's default instance gives its own.
    assert keys["nodePools.system.minSize"].default == "`2`"
    assert keys["nodePools.gpuSpot.maxSize"].default == "`4`"
    assert keys["nodePools.gpuSpot.instanceTypes"].default == "`[g6.2xlarge, g5.2xlarge]`"
    # A section unset by default shows its own fields' defaults; a field with none is required.
    assert keys["network.natGateways"].default == "`single`"
    assert keys["network.zones[].name"].default == "required"
    assert keys["environment"].default == "the stack's name"


def test_types_show_allowed_values_and_ranges() -> None:
    keys = {key.path: key for key in reference.documented_keys()}
    assert keys["inference.gpuCount"].type == "integer (≥ 1, ≤ 8)"
    assert keys["clusterAutoscaler.scaleDownUtilizationThreshold"].type == "number (> 0, ≤ 1)"
    assert keys["network.natGateways"].type == "`single` · `perZone`"
    assert keys["inference.model.maxQueue"].type == "integer (≥ 1)"  # the bound inside an optional type
    assert keys["apiKeys"].type == "secret string"


def test_a_field_without_a_description_is_refused_by_name() -> None:
    class Undocumented(ConfigSection):
        documented: int = Field(1, description="has one")
        silent: int = 2

    with pytest.raises(ValueError, match=r"stack config key demo\.silent has no Field\(description=\.\.\.\)"):
        list(reference._object_keys("demo", FieldInfo(annotation=Undocumented, description="d"), Undocumented()))


def test_a_pipe_in_a_description_does_not_split_the_table_row() -> None:
    assert reference._cell("a | b") == "a \\| b"
