"""DeepSeek's tool-call format (DeepSeek-V3, V3-0324, R1-0528), written once: the chat template renders earlier calls
and their results with it, the engine constrains forced calls to it, and the API parses the model's calls out of it.

A turn that calls tools:

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
    ```json
    ARGUMENTS
    ```<｜tool▁call▁end｜>
    <｜tool▁call▁begin｜>…<｜tool▁call▁end｜><｜tool▁calls▁end｜>

and the results, in the next turn: <｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>RESULT<｜tool▁output▁end｜>…
<｜tool▁outputs▁end｜>. Each marker is one token of DeepSeek's tokenizer.
"""

from __future__ import annotations

import json
from typing import Any

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
OUTPUTS_BEGIN = "<｜tool▁outputs▁begin｜>"
OUTPUTS_END = "<｜tool▁outputs▁end｜>"
OUTPUT_BEGIN = "<｜tool▁output▁begin｜>"
OUTPUT_END = "<｜tool▁output▁end｜>"

CALLS_SEPARATOR = "\n"  # between two calls of one turn
ARGUMENTS_OPEN = "\n```json\n"  # between the name and the arguments
ARGUMENTS_CLOSE = "\n```"


def call_head(name: str, kind: str = "function") -> str:
    """A call up to its arguments."""
    return f"{CALL_BEGIN}{kind}{SEP}{name}{ARGUMENTS_OPEN}"


def call_text(name: str, arguments: str, kind: str = "function") -> str:
    return f"{call_head(name, kind)}{arguments}{ARGUMENTS_CLOSE}{CALL_END}"


def tools_section(functions: list[dict[str, Any]]) -> str:
    """The functions offered, for the system prompt, as DeepSeek-V3 was shown them: for checkpoints whose own chat
    template does not render `tools`."""
    lines = ["## Tools", "", "### Function", "", "You have the following functions available:", ""]
    for function in functions:
        lines += [f"- `{function['name']}`:", "```json", json.dumps(function, ensure_ascii=False), "```"]
    return "\n".join(lines)
