"""Structured output (QEfficient/serving/structured.py) with llguidance and SmolLM2-135M-Instruct's real tokenizer.

Logits come from a seeded random generator; tokens are picked greedily or sampled from the masked logits and fed
back with accept(), as the serving engine does, until the grammar is finished or an EOS is picked.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import jsonschema
import numpy as np
import pytest

from QEfficient.serving.structured import GrammarCompiler, TokenConstraint

VOCAB = 49152  # SmolLM2's config.vocab_size
MAX_STEPS = 300

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}
BOUNDED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
    "x-guidance": {"whitespace_flexible": False},  # llguidance's option: no free whitespace (see below)
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from QEfficient.transformers.gguf import gguf_folder
    from QEfficient.utils.default_models import default_causal_lm

    path = default_causal_lm()
    folder = gguf_folder(path.parent, path.name, AutoModelForCausalLM)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def compiler(tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, VOCAB)


@pytest.fixture(scope="module")
def closing_bias(tokenizer: Any, compiler: GrammarCompiler) -> np.ndarray:
    """+6 on EOS and on tokens holding `"`, `}`, `]` or `,`: a stand-in for a model that likes to wrap up, so that
    unbounded grammars (any JSON object, free strings) end within MAX_STEPS."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(VOCAB)))
    bias = np.array([6.0 if any(c in p for c in '"}],') else 0.0 for p in pieces], dtype=np.float32)
    bias[compiler.eos_token_ids] = 6.0
    return bias


def drive(
    constraint: TokenConstraint,
    eos: list[int],
    seed: int,
    *,
    greedy: bool,
    bias: np.ndarray | None = None,
    vocab: int = VOCAB,
    timings: list[float] | None = None,
) -> list[int]:
    """Tokens picked under the constraint (EOS excluded) until it is finished or an EOS is picked."""
    rng = np.random.default_rng(seed)
    tokens: list[int] = []
    for _ in range(MAX_STEPS):
        logits = rng.standard_normal(vocab, dtype=np.float32)
        if bias is not None:
            logits[: len(bias)] += bias
        before = logits.copy()
        start = time.perf_counter()
        masked = constraint.mask(logits)
        if timings is not None:
            timings.append(time.perf_counter() - start)
        allowed = np.isfinite(masked)
        assert allowed.any(), "the mask forbade every token"
        assert np.isneginf(masked[~allowed]).all()
        np.testing.assert_array_equal(masked[allowed], before[allowed])  # allowed logits are untouched
        if greedy:
            token = int(masked.argmax())
        else:
            probs = np.exp(masked.astype(np.float64) - masked.max())
            token = int(rng.choice(vocab, p=probs / probs.sum()))
        constraint.accept(token)
        if token in eos:
            assert constraint.finished
            return tokens
        tokens.append(token)
        if constraint.finished:
            return tokens
    raise AssertionError(f"the constrained output did not end within {MAX_STEPS} steps")


def test_unconstrained_gives_none(compiler: GrammarCompiler) -> None:
    assert compiler.constraint() is None
    assert compiler.constraint(None, None) is None
    assert compiler.constraint({"type": "text"}) is None
    assert isinstance(compiler.constraint({"type": "text"}, guided_regex="ab"), TokenConstraint)


def test_json_object(compiler: GrammarCompiler, tokenizer: Any, closing_bias: np.ndarray) -> None:
    texts = []
    for seed in range(6):
        constraint = compiler.constraint({"type": "json_object"})
        tokens = drive(constraint, compiler.eos_token_ids, seed, greedy=seed % 2 == 0, bias=closing_bias)
        text = tokenizer.decode(tokens)
        assert constraint.finished
        assert isinstance(json.loads(text), dict), text
        texts.append(text)
    print("\njson_object outputs:", texts)


def test_json_schema(compiler: GrammarCompiler, tokenizer: Any, closing_bias: np.ndarray) -> None:
    timings: list[float] = []
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for seed in range(4):
        constraint = compiler.constraint(response_format)
        tokens = drive(constraint, compiler.eos_token_ids, seed, greedy=seed % 2 == 0, bias=closing_bias)
        value = json.loads(tokenizer.decode(tokens))
        jsonschema.validate(value, SCHEMA)
    # Pure random sampling, no bias: the schema's own bounds end it. Random logits would pick JSON's optional
    # whitespace (~100 tokens allowed between any two items) for ever, so this schema turns it off.
    bounded = {"type": "json_schema", "json_schema": {"name": "person", "schema": BOUNDED_SCHEMA}}
    for seed in range(4):
        constraint = compiler.constraint(bounded)
        tokens = drive(constraint, compiler.eos_token_ids, 100 + seed, greedy=False, timings=timings)
        value = json.loads(tokenizer.decode(tokens))
        jsonschema.validate(value, BOUNDED_SCHEMA)
    print(f"\nmask(): mean {np.mean(timings) * 1e6:.0f} us over {len(timings)} calls (vocab {VOCAB})")


def test_guided_regex(compiler: GrammarCompiler, tokenizer: Any) -> None:
    regex = r"[0-9]{3}-[A-Z][a-z]{1,8}( [A-Z][a-z]{1,8})?"
    outputs = []
    for seed in range(8):
        constraint = compiler.constraint(guided_regex=regex)
        text = tokenizer.decode(drive(constraint, compiler.eos_token_ids, seed, greedy=seed % 2 == 0))
        assert re.fullmatch(regex, text), text
        outputs.append(text)
    print("\nguided_regex outputs:", outputs)


def test_mask_forbids_and_eos(compiler: GrammarCompiler, tokenizer: Any) -> None:
    eos = compiler.eos_token_ids
    assert eos == [tokenizer.eos_token_id]
    constraint = compiler.constraint({"type": "json_object"})
    masked = constraint.mask(np.zeros(VOCAB, dtype=np.float32))
    allowed = np.flatnonzero(np.isfinite(masked))
    assert 0 < len(allowed) < 10
    assert all(tokenizer.decode([int(t)]).startswith("{") for t in allowed)  # the JSON starts at once
    hello = tokenizer.encode("hello", add_special_tokens=False)[0]
    assert np.isneginf(masked[hello]) and np.isneginf(masked[eos]).all()
    # a grammar that may end or go on: EOS allowed exactly while the output so far is complete
    constraint = compiler.constraint(guided_regex="a+")
    a = tokenizer.convert_tokens_to_ids("a")
    assert np.isneginf(constraint.mask(np.zeros(VOCAB, dtype=np.float32))[eos]).all()
    constraint.accept(a)
    masked = constraint.mask(np.zeros(VOCAB, dtype=np.float32))
    assert np.isfinite(masked[eos]).all() and np.isfinite(masked[a]) and not constraint.finished
    # a grammar that is complete: only EOS is left
    constraint = compiler.constraint(guided_regex="yes|no")
    for token in tokenizer.encode("yes", add_special_tokens=False):
        constraint.accept(token)
    assert constraint.finished
    masked = constraint.mask(np.zeros(VOCAB, dtype=np.float32))
    assert np.flatnonzero(np.isfinite(masked)).tolist() == eos
    with pytest.raises(ValueError, match="not allowed"):
        constraint.accept(a)
    constraint.accept(eos[0])
    assert constraint.finished


def test_extra_logit_columns_and_eos_ids(tokenizer: Any) -> None:
    wide = GrammarCompiler(tokenizer, VOCAB + 64, eos_token_ids=[0, 2])
    assert wide.eos_token_ids == [0, 2]
    constraint = wide.constraint(guided_regex="[a-z ]{0,12}")
    rng = np.random.default_rng(0)
    for _ in range(5):
        logits = rng.standard_normal(VOCAB + 64, dtype=np.float32)
        logits[VOCAB:] = 100.0  # padding columns the model should never win with
        masked = constraint.mask(logits)
        assert np.isneginf(masked[VOCAB:]).all()
        assert np.isfinite(masked[[0, 2]]).all()  # empty / partial output is complete: both EOS ids allowed
        constraint.accept(int(masked.argmax()))
        if constraint.finished:
            break
    with pytest.raises(ValueError, match="shape"):
        constraint.mask(np.zeros(VOCAB, dtype=np.float32))


def test_accept_forbidden_token(compiler: GrammarCompiler, tokenizer: Any) -> None:
    hello = tokenizer.encode("hello", add_special_tokens=False)[0]
    brace = tokenizer.convert_tokens_to_ids("{")
    eos = compiler.eos_token_ids[0]
    for masked_first in (True, False):
        constraint = compiler.constraint({"type": "json_object"})
        if masked_first:
            constraint.mask(np.zeros(VOCAB, dtype=np.float32))
        with pytest.raises(ValueError, match="not allowed"):
            constraint.accept(hello)
        with pytest.raises(ValueError, match="not allowed"):
            constraint.accept(eos)  # an empty output is no JSON object
        with pytest.raises(ValueError, match="outside the vocabulary"):
            constraint.accept(VOCAB)
        constraint.accept(brace)  # a refused token leaves the state usable
        assert not constraint.finished


@pytest.mark.parametrize(
    ("kwargs", "patterns"),
    [
        ({"response_format": {"type": "yaml"}}, ["Unknown response_format type 'yaml'", "json_schema"]),
        ({"response_format": {"json_schema": {}}}, ["needs a 'type'"]),
        ({"response_format": "json_object"}, ["must be an object"]),
        ({"response_format": {"type": "json_schema"}}, ["needs a 'json_schema' object"]),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, ["needs a 'schema'", "nothing"]),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}},
            ["Invalid response_format json_schema", "foo", "fix the schema"],
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nope"}}}},
            ["Invalid response_format json_schema", "nope"],
        ),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, ["cannot be used together"]),
        ({"guided_regex": "a(b"}, ["Invalid guided_regex", "unclosed group", "Rust regex syntax"]),
        ({"guided_regex": r"(?=a)b"}, ["Invalid guided_regex", "look-around"]),
    ],
)
def test_bad_input(compiler: GrammarCompiler, kwargs: dict[str, Any], patterns: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        compiler.constraint(**kwargs)
    for pattern in patterns:
        assert pattern in str(info.value), str(info.value)
