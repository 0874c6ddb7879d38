"""Split DeepSeek-R1 output into reasoning and answer, as DeepSeek's own API does.

Text between `<think>` and `</think>` is reasoning (`reasoning_content`); the rest is the answer (`content`).
R1's chat template opens `<think>` itself at the end of the prompt, so a generation may start inside the reasoning
with only the closing tag in its text. Works on streamed pieces: a tag split across pieces is held back until whole.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.model.conventions import THINK_CLOSE

OPEN, CLOSE = "<think>", THINK_CLOSE


def prompt_opens_reasoning(prompt_text: str) -> bool:
    """True when the rendered prompt ends by opening a <think> block, as R1's template does (a user who merely
    writes "<think>" somewhere in a message does not count)."""
    return prompt_text.rstrip().endswith(OPEN)


class ReasoningSplitter:
    def __init__(self, starts_in_reasoning: bool = False) -> None:
        self._in_reasoning = starts_in_reasoning
        self._seen_close = False
        self._skip_newlines = starts_in_reasoning  # newlines right after a tag are layout, not text
        self._buffer = ""

    def feed(self, text: str) -> tuple[str, str]:
        """Return (reasoning, content) that can be shown for this piece of text."""
        self._buffer += text
        reasoning: list[str] = []
        content: list[str] = []
        while self._buffer:
            if self._skip_newlines:
                self._buffer = self._buffer.lstrip("\n")
                if not self._buffer:
                    break
                self._skip_newlines = False
            if not self._in_reasoning and self._seen_close:
                # One reasoning block per answer: after </think>, a later <think> is ordinary text.
                content.append(self._buffer)
                self._buffer = ""
                break
            tag = CLOSE if self._in_reasoning else OPEN
            sink = reasoning if self._in_reasoning else content
            index = self._buffer.find(tag)
            if index < 0:
                keep = _partial_tag_suffix(self._buffer, tag)
                sink.append(self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                break
            sink.append(self._buffer[:index])
            self._buffer = self._buffer[index + len(tag) :]
            self._seen_close = self._seen_close or self._in_reasoning
            self._in_reasoning = not self._in_reasoning
            self._skip_newlines = True
        return "".join(reasoning), "".join(content)

    @property
    def in_reasoning(self) -> bool:
        return self._in_reasoning

    @property
    def closed(self) -> bool:
        """The reasoning block has ended (its </think> has been seen)."""
        return self._seen_close

    def finish(self) -> tuple[str, str]:
        """The text has ended: anything held back is plain text of the current part."""
        rest, self._buffer = self._buffer, ""
        return (rest, "") if self._in_reasoning else ("", rest)


class ReasoningTokens:
    """How many of a generation's tokens were reasoning, for usage.completion_tokens_details.reasoning_tokens: from
    the token that opened the block (or the first, when the prompt opened it) to the one that closed it (its
    </think> counted, as DeepSeek's API counts), or to the last while it is still open. Fed the generation's text
    as it comes with the completion tokens so far; text held back across events (a partial tag, a possible stop
    string) counts at the event that released it."""

    def __init__(self, starts_in_reasoning: bool = False) -> None:
        self._splitter = ReasoningSplitter(starts_in_reasoning)
        self._at_open: int | None = 0 if starts_in_reasoning else None
        self._at_close: int | None = None

    def feed(self, text: str, completion_tokens: int) -> None:
        if self._at_close is not None:
            return
        before = completion_tokens - 1
        self._splitter.feed(text)
        if self._at_open is None and (self._splitter.in_reasoning or self._splitter.closed):
            self._at_open = before
        if self._splitter.closed:
            self._at_close = completion_tokens

    def feed_pieces(self, pieces: Iterable[tuple[str, int]]) -> None:
        """(text, completion tokens so far) as the generation gave them: TokenEvent.pieces()."""
        for text, completion_tokens in pieces:
            self.feed(text, completion_tokens)

    def count(self, completion_tokens: int) -> int:
        if self._at_open is None:
            return 0
        end = self._at_close if self._at_close is not None else completion_tokens
        return max(0, end - self._at_open)


def split_reasoning(text: str, starts_in_reasoning: bool = False) -> tuple[str | None, str]:
    """Whole-text version: (reasoning or None when there was none, content)."""
    splitter = ReasoningSplitter(starts_in_reasoning)
    reasoning, content = splitter.feed(text)
    more_reasoning, more_content = splitter.finish()
    reasoning += more_reasoning
    content += more_content
    had_reasoning = starts_in_reasoning or OPEN in text
    return (reasoning.rstrip("\n") if had_reasoning else None), content


def _partial_tag_suffix(text: str, tag: str) -> int:
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0
