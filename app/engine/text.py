"""Token ids to text, incrementally, with stop strings.

Text is decoded in small windows so multi-byte characters split across tokens come out whole, and any text that
could be the start of a stop string is held back until it is known not to be one, so a stop string never leaks
into the output, streamed or not.
"""

from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalText:
    def __init__(self, decoder: Decoder, stop: tuple[str, ...] = ()) -> None:
        self._decoder = decoder
        self._stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._tokens: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._pending = ""  # decoded but not yet emitted (could be the start of a stop string)
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that can be shown now. Sets `stopped` when a stop string appears."""
        if self.stopped:
            return ""
        self._tokens.append(token_id)
        window = self._tokens[self._prefix_offset :]
        previous = self._decoder.decode(self._tokens[self._prefix_offset : self._read_offset], False)
        current = self._decoder.decode(window, False)
        if len(current) <= len(previous) or current.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        self._pending += current[len(previous) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._tokens)
        return self._release()

    def _stop_index(self) -> int:
        """Where the first stop string starts in the pending text, or -1."""
        return min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)

    def _release(self) -> str:
        cut = self._stop_index()
        if cut >= 0:
            self.stopped = True
            text, self._pending = self._pending[:cut], ""
            return text
        if self._hold == 0 or not self._stop:
            text, self._pending = self._pending, ""
            return text
        keep = self._longest_stop_prefix_suffix()
        text = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return text

    def _longest_stop_prefix_suffix(self) -> int:
        """Length of the longest end of the pending text that is the start of some stop string."""
        for length in range(min(self._hold, len(self._pending)), 0, -1):
            tail = self._pending[-length:]
            if any(s.startswith(tail) for s in self._stop):
                return length
        return 0

    def flush(self) -> str:
        """The request ended without a stop string: what was held back, and any partial character, is text now."""
        if self.stopped:
            return ""
        previous = self._decoder.decode(self._tokens[self._prefix_offset : self._read_offset], False)
        current = self._decoder.decode(self._tokens[self._prefix_offset :], False)
        tail = current[len(previous) :] if len(current) > len(previous) else ""
        self._prefix_offset = self._read_offset = len(self._tokens)
        self._pending += tail
        cut = self._stop_index()
        self.stopped = cut >= 0
        text, self._pending = (self._pending[:cut] if self.stopped else self._pending), ""
        return text
