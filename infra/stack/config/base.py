"""The base of every config section: camelCase keys in the stack file, unknown keys refused, strict types, immutable."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ConfigSection(BaseModel):
    """Strict, immutable, camelCase in the stack file; unknown keys are errors (a typo never passes silently), and
    so is a value of the wrong type (`cpuRequest: 4` where a quantity string is meant): nothing is coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, alias_generator=to_camel, populate_by_name=True)


# An IAM role or user ARN (any partition); `kind` says which.
IAM_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:(?P<kind>role|user)/[\w+=,.@/-]+\Z")  # \Z: no trailing newline
