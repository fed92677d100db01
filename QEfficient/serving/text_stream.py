"""Incremental detokenisation with stop strings: the text a streaming client receives, piece by piece.

Each new token re-decodes the request's tokens and releases only the text that can no longer change: an incomplete
UTF-8 sequence at the end (decoded as U+FFFD) waits for its next byte, and the last `len(longest stop) - 1`
characters wait until it is clear they do not begin a stop string. A stop string ends the text before it, as in
OpenAI's API (the stop string itself is not returned).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class IncrementalText:
    """The text of one request's generated tokens, released in pieces that never need taking back."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.tokens: list[int] = []
        self.sent = 0  # characters released so far
        self.stopped = False  # a stop string was found

    def add(self, token: int, last: bool = False) -> str:
        """Record `token`; return the newly released text. With `last`, release everything (the request ended).

        After a stop string is found (`stopped`), the text before it is released and nothing more is added.
        """
        if self.stopped:
            return ""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if found:  # never inside the released text: it was checked whole before its release
            self.stopped = True
            end = min(found)
        elif last:
            end = len(text)
        else:
            end = len(text.rstrip("\ufffd")) - self._hold
        if end <= self.sent:
            return ""
        piece, self.sent = text[self.sent : end], end
        return piece
