"""Prints the mocked resources and outputs of stacks as JSON: `python -m stack.testing.dump dev prod`.

The policy-pack tests run this in the main environment (pulumi-aws needs protobuf 6; pulumi-policy pins 5) and
check every rule over the result.
"""

from __future__ import annotations

import json
import sys

from stack.testing.harness import run_stack


def main(argv: list[str]) -> int:
    stacks = argv or ["dev", "prod"]
    print(json.dumps({stack: run_stack(stack).to_json() for stack in stacks}, indent=1, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
