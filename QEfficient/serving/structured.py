"""Structured output (grammar-constrained decoding) for the OpenAI-compatible server, with `llguidance`.

`GrammarCompiler` wraps the model's tokenizer once (an `llguidance.LLTokenizer`, ~0.3 s) and turns a request's
`response_format` (`json_object`, `json_schema`) or `guided_regex` into an llguidance grammar, compiled into an
`llguidance.LLMatcher` per request (< 1 ms; errors surface here, before the request is queued). At every decode step
`TokenConstraint.mask` asks the matcher for the bitmask of allowed next tokens (`fill_next_token_bitmask`, native code
that releases the GIL; ~0.1-0.2 ms per call for a 49k vocabulary) and sets every forbidden logit to -inf; `accept`
then advances the matcher by the sampled token. EOS is allowed exactly where the grammar may end; once nothing more
may follow (`finished`), only EOS is allowed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import llguidance
import llguidance.hf
import llguidance.numpy
import numpy as np

logger = logging.getLogger(__name__)

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


class GrammarCompiler:
    """Built once per tokenizer (server start); turns an OpenAI request's constraints into per-request matchers.

    `vocab_size` is the width of the model's logits; columns past the tokenizer's vocabulary are never allowed.
    `eos_token_ids` are the ids that end generation (default: the tokenizer's `eos_token_id`); pass the engine's whole
    set (generation config, model config, tokenizer) so that every one of them is allowed where the grammar may end
    and accepted by `TokenConstraint.accept`.

    JSON grammars use llguidance's default options: no whitespace before the value (the first token starts the JSON,
    e.g. `{`), flexible JSON whitespace between tokens inside it, separators "," and ":", and nothing after the
    closing bracket. A schema may tune these with llguidance's `"x-guidance"` key (e.g.
    `{"whitespace_flexible": false}`). The OpenAI `strict` flag is ignored: the schema is always enforced.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int] | None = None) -> None:
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}.")
        if eos_token_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            eos_token_ids = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self.eos_token_ids: list[int] = sorted({int(t) for t in eos_token_ids if 0 <= int(t) < vocab_size})
        if not self.eos_token_ids:
            raise ValueError(
                "Structured output needs an EOS token id below vocab_size: set tokenizer.eos_token_id or pass "
                "eos_token_ids to GrammarCompiler."
            )
        self.vocab_size = int(vocab_size)
        # llguidance's vocabulary covers the logits and the whole tokenizer; masks are cut to the logits' width.
        self._n_vocab = max(self.vocab_size, len(tokenizer))
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self._n_vocab, eos_token=self.eos_token_ids)

    def constraint(
        self, response_format: dict[str, Any] | None = None, guided_regex: str | None = None
    ) -> TokenConstraint | None:
        """The grammar state for one request, or None when its output is unconstrained.

        Raises ValueError, with the problem and its fix, for any bad input: an unknown `response_format` type, a
        `json_schema` without a schema, a schema or regex llguidance rejects, or `response_format` and `guided_regex`
        both given.
        """
        grammar, what = self._grammar(response_format, guided_regex)
        if grammar is None:
            return None
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            fix = (
                "use the Rust regex syntax (no look-around, no backreferences)"
                if what == "guided_regex"
                else "fix the schema or remove the keywords it names"
            )
            raise ValueError(f"Invalid {what}: {matcher.get_error().strip()} ({fix}).")
        for warning in matcher.get_grammar_warnings():
            logger.debug("Structured output %s: %s", what, warning)
        return TokenConstraint(matcher, self.vocab_size, self._n_vocab, self.eos_token_ids)

    def _grammar(self, response_format: dict[str, Any] | None, guided_regex: str | None) -> tuple[str | None, str]:
        """The llguidance grammar (None: unconstrained) and the name of the field it comes from."""
        if response_format is not None and not isinstance(response_format, dict):
            raise ValueError(
                f"response_format must be an object such as {{'type': 'json_object'}}, got {type(response_format)}."
            )
        kind = None if response_format is None else response_format.get("type")
        if guided_regex is not None:
            if kind not in (None, "text"):
                raise ValueError(
                    "response_format and guided_regex cannot be used together: send only one of them "
                    "(guided_regex alone constrains the whole output)."
                )
            if not isinstance(guided_regex, str):
                raise ValueError(f"guided_regex must be a string, got {type(guided_regex).__name__}.")
            return llguidance.LLMatcher.grammar_from_regex(guided_regex), "guided_regex"
        if kind is None and response_format is not None:
            raise ValueError(
                "response_format needs a 'type': one of 'text', 'json_object', 'json_schema' "
                "(e.g. {'type': 'json_object'})."
            )
        if kind in (None, "text"):
            return None, "response_format"
        if kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}), "response_format json_object"
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict):
                raise ValueError(
                    "response_format of type 'json_schema' needs a 'json_schema' object: "
                    "{'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}}."
                )
            schema = spec.get("schema")
            if not isinstance(schema, dict):
                raise ValueError(
                    "response_format.json_schema needs a 'schema' that is a JSON Schema object, e.g. "
                    "{'name': 'answer', 'schema': {'type': 'object', 'properties': {...}}}; got "
                    f"{'nothing' if schema is None else type(schema).__name__}."
                )
            try:
                return llguidance.LLMatcher.grammar_from_json_schema(schema), "response_format json_schema"
            except (ValueError, TypeError) as exc:
                raise ValueError(f"Invalid response_format json_schema: {exc} (send a JSON Schema object).") from exc
        raise ValueError(
            f"Unknown response_format type {kind!r}: use one of {', '.join(repr(t) for t in RESPONSE_FORMAT_TYPES)}."
        )


class TokenConstraint:
    """One request's grammar state: `mask` the logits of its next token, then `accept` the token it sampled.

    Calling `mask` before `accept` is optional (a greedy or forced token may be accepted directly); when it was
    called for the current state, `accept` refuses exactly the tokens that mask forbade. A refused token raises
    ValueError and leaves the state unchanged. Once `finished`, `mask` allows only the EOS ids, and `accept` takes
    only those. A request is not tied to a thread, but one constraint must not be used from two threads at once.
    """

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, n_vocab: int, eos_token_ids: list[int]) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._eos = frozenset(eos_token_ids)
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, n_vocab)
        self._forbidden = np.zeros(vocab_size, dtype=bool)
        self._fresh = False  # `_forbidden` describes the current state

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """`logits` (1-D, [vocab_size], float) with every token the grammar forbids set to -inf, in place."""
        if logits.shape != (self._vocab_size,):
            raise ValueError(f"mask() takes the logits of one token, shape ({self._vocab_size},); got {logits.shape}.")
        self._check_error()
        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bitmask)
        self._check_error()
        bits = np.unpackbits(self._bitmask.view(np.uint8), count=self._vocab_size, bitorder="little")
        np.equal(bits, 0, out=self._forbidden)
        np.copyto(logits, -np.inf, where=self._forbidden)
        self._fresh = True
        return logits

    def accept(self, token: int) -> None:
        """Advance the grammar by the sampled `token`; ValueError (state unchanged) if the grammar forbids it."""
        token = int(token)
        self._check_error()
        if not 0 <= token < self._vocab_size:
            raise ValueError(f"Token {token} is outside the vocabulary (0..{self._vocab_size - 1}).")
        if self._fresh:
            allowed = not self._forbidden[token]
        elif token in self._eos:
            allowed = self._matcher.is_accepting()
        else:
            allowed = self._matcher.validate_tokens([token]) == 1
        if not allowed or not self._matcher.consume_token(token):
            raise ValueError(f"Token {token} is not allowed by the requested output format at this point.")
        self._fresh = False

    @property
    def finished(self) -> bool:
        """The grammar is complete and nothing more may follow (only EOS is allowed from now on)."""
        return self._matcher.is_stopped()

    def _check_error(self) -> None:
        if self._matcher.is_error():
            raise ValueError(f"Structured output failed: {self._matcher.get_error().strip()}")
