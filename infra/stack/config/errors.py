"""The one error a broken stack file raises: a single line naming the config key and the fix."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails

# Fixes for pydantic's own error types (our validators write their own fix into the message).
_FIXES: dict[str, str] = {
    "missing": "add this key to the stack file",
    "extra_forbidden": "remove it or correct its spelling (see docs/deploy/configuration.md)",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "int_from_float": "write a whole number",
    "float_parsing": "write a number",
    "float_type": "write a number",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": "write a string",
    "list_type": "write a YAML list",
    "tuple_type": "write a YAML list",
    "dict_type": "write a YAML mapping",
    "model_type": "write a YAML mapping",
    "model_attributes_type": "write a YAML mapping",
    "literal_error": "use one of the values listed",
    "ip_v4_network": "write an IPv4 network in CIDR notation, e.g. 10.0.0.0/16, with no host bits set",
    "greater_than_equal": "raise the value",
    "greater_than": "raise the value",
    "less_than_equal": "lower the value",
    "less_than": "lower the value",
    "too_short": "add entries",
    "too_long": "remove entries",
    "string_pattern_mismatch": "match the pattern shown",
}


class ConfigError(Exception):
    """A broken stack file. `str(error)` is one line: the key, what is wrong, and how to fix it."""

    def __init__(self, key: str, problem: str, fix: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        message = f"config key '{key}': {problem}"
        if fix:
            message += f"; fix: {fix}"
        super().__init__(" ".join(message.split()))


def key_path(namespace: str, loc: Sequence[int | str]) -> str:
    """`deepseek-inference:nodePools.gpuSpot.instanceTypes[1]` from pydantic's error location."""
    path = namespace
    for index, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if index else ":") + part
    return path


def from_validation_error(error: ValidationError, namespace: str, prefix: Sequence[int | str] = ()) -> ConfigError:
    """The first problem pydantic found, as a ConfigError naming the stack-file key (camelCase, as written)."""
    details: ErrorDetails = error.errors(include_url=False)[0]
    loc = [*prefix, *details["loc"]]
    message = details["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    fix = _FIXES.get(details["type"])
    if details["type"] == "missing":
        message = "is required but missing"
    elif details["type"] == "extra_forbidden":
        message = "is not a known key"
    elif "input" in details and details["type"] not in ("value_error", "assertion_error"):
        message = f"{message} (got {details['input']!r})"
    return ConfigError(key_path(namespace, loc), message, fix)
