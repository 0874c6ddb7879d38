"""Tool calls out of the model's answer (DeepSeek's format: app/model/tool_format.py), as OpenAI shapes them: whole
(`message.tool_calls`) or streamed (`delta.tool_calls`, each call in one delta once its end marker has come).

What precedes the calls is the answer's content. Text that does not parse as calls (an unfinished call at
max_tokens, a malformed one) is kept as content: nothing the model wrote is dropped.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from app.model.tool_format import ARGUMENTS_CLOSE, ARGUMENTS_OPEN, CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, SEP

# One call's text between CALL_BEGIN and CALL_END: its kind, name and arguments.
_CALL = re.compile(
    rf"^(?P<kind>\w+){re.escape(SEP)}(?P<name>[^\n]+?)\s*{re.escape(ARGUMENTS_OPEN)}(?P<arguments>.*){re.escape(ARGUMENTS_CLOSE)}\s*$",
    re.DOTALL,
)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def shaped(self, index: int | None = None) -> dict[str, Any]:
        """OpenAI's shape: message.tool_calls[i], or with `index` a streamed delta.tool_calls item."""
        shape: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return shape if index is None else {"index": index, **shape}


def _call(body: str) -> ToolCall | None:
    found = _CALL.match(body)
    if found is None:
        return None
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", found["name"].strip(), found["arguments"].strip())


def parse(text: str) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a whole answer, exactly as a stream of it gives them."""
    stream = ToolCallStream()
    content, calls = stream.feed(text)
    rest, more = stream.finish()
    return content + rest, calls + more


class ToolCallStream:
    """Content and finished calls of a streamed answer, piece by piece. A marker split across pieces is held back
    until whole; a call goes out once its end marker has come. From a call that does not parse on, and after the
    calls end, the text is content again."""

    def __init__(self) -> None:
        self._buffer = ""  # text not given out yet
        self._in_calls = False
        self._pending = ""  # the calls part since the last call given out: content again if it never parses
        self._through = False  # past the calls (ended, or broken): everything is content

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buffer += text
        if self._through:
            shown, self._buffer = self._buffer, ""
            return shown, []
        shown = ""
        if not self._in_calls:
            content, begin, rest = self._buffer.partition(CALLS_BEGIN)
            if not begin:
                keep = _partial_suffix(self._buffer, CALLS_BEGIN)
                shown = self._buffer[: len(self._buffer) - keep]
                self._buffer = self._buffer[len(shown) :]
                return shown, []
            shown, self._in_calls, self._pending, self._buffer = content, True, CALLS_BEGIN, rest
        calls = self._take_calls()
        if self._through:
            shown, self._buffer = shown + self._buffer, ""
        return shown, calls

    def _take_calls(self) -> list[ToolCall]:
        calls: list[ToolCall] = []
        while True:
            opened = self._buffer.lstrip()
            if opened.startswith(CALLS_END):
                self._through, self._pending, self._buffer = True, "", opened[len(CALLS_END) :]
                return calls
            body, end, rest = self._buffer.partition(CALL_END)
            if not end:
                return calls
            head, begin, call_body = body.partition(CALL_BEGIN)
            call = _call(call_body) if begin and not head.strip() else None
            if call is None:  # not DeepSeek's format after all: the rest is text
                self._through, self._buffer, self._pending = True, self._pending + self._buffer, ""
                return calls
            calls.append(call)
            self._pending, self._buffer = "", rest

    def finish(self) -> tuple[str, list[ToolCall]]:
        """At the end of the answer: what is held back, as content (an unfinished call whole)."""
        held = self._pending + self._buffer if self._in_calls and not self._through else self._buffer
        self._buffer = self._pending = ""
        return held, []


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that could be the start of `marker`."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0
