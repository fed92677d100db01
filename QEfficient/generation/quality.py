"""Output quality of a compiled causal LM: perplexity on a fixed text, and greedy agreement between two runs.

The compiled graphs return only the last position's logits, so `perplexity` teacher-forces the text through
decode steps: token i goes in at position i (one `run_with_state` step each, the KV cache kept between steps)
and the logits of that step score token i + 1. This is exact (the same computation as one forward over the
whole text) and needs no extra graph. `hf_perplexity` is the reference: one forward of the PyTorch model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _token_list(token_ids: Sequence[int]) -> list[int]:
    ids = [int(t) for t in token_ids]
    if len(ids) < 2:
        raise ValueError(f"Perplexity needs at least 2 tokens (one to condition on, one to score); got {len(ids)}.")
    return ids


def _negative_log_likelihood(logits: np.ndarray, target: int) -> float:
    """-log softmax(logits)[target], in float64."""
    row = logits.astype(np.float64, copy=False)
    top = row.max()
    return float(top + math.log(np.exp(row - top).sum()) - row[target])


def perplexity(model: Any, token_ids: Sequence[int]) -> float:
    """Perplexity of `token_ids` under a compiled `QEFFAutoModelForCausalLM` (anything with `program` and
    `compile_config` works; `step_inputs`, if it has them, go into every step), computed by teacher forcing through
    decode steps.

    exp(mean over i of -log p(token[i+1] | token[:i+1])). The text must fit in the compiled context:
    `len(token_ids) < ctx_len`. A model compiled with `full_batch_size` (continuous batching) is refused.
    Rows beyond the first of a `batch_size` > 1 program are idle (position -1).
    """
    ids = _token_list(token_ids)
    config = getattr(model, "compile_config", None) or {}
    if "ctx_len" not in config:
        raise RuntimeError("perplexity() needs a compiled model; call .compile(...) first.")
    ctx_len, batch = int(config["ctx_len"]), int(config.get("batch_size") or 1)
    if config.get("full_batch_size"):
        raise ValueError("perplexity() does not support continuous batching; compile with batch_size=1 instead.")
    if len(ids) >= ctx_len:
        raise ValueError(
            f"The text has {len(ids)} tokens but ctx_len is {ctx_len}: perplexity needs len(token_ids) < ctx_len. "
            f"Use the first {ctx_len - 1} tokens, or compile with a larger ctx_len."
        )
    program = model.program
    state = program.new_state({"batch_size": batch, "seq_len": 1})
    step_ids = np.zeros((batch, 1), dtype=np.int64)
    positions = np.full((batch, 1), -1, dtype=np.int64)
    # inputs a step takes besides ids and positions (a LoRA program's `adapter_ids`: the active adapter)
    extra = dict(getattr(model, "step_inputs", None) or {})

    def step(token: int) -> np.ndarray:
        step_ids[0, 0] = token
        positions[0, 0] += 1
        inputs = {"input_ids": step_ids, "position_ids": positions, **extra}
        return program.run_with_state(inputs, state)["logits"][0, -1]

    return stepwise_perplexity(step, ids)


def stepwise_perplexity(step: Callable[[int], np.ndarray], token_ids: Sequence[int]) -> float:
    """Perplexity of `token_ids` under any engine that takes one token at a time: `step(token)` appends `token` to
    the engine's sequence and returns the logits [vocab] that predict the next one. Teacher forcing, as
    `perplexity` (which is this over a compiled program's decode steps)."""
    ids = _token_list(token_ids)
    total = sum(
        _negative_log_likelihood(np.asarray(step(token)).reshape(-1), ids[i + 1]) for i, token in enumerate(ids[:-1])
    )
    return math.exp(total / (len(ids) - 1))


def hf_perplexity(hf_model: Any, token_ids: Sequence[int]) -> float:
    """Perplexity of `token_ids` under a transformers causal LM: one forward over the whole text (the reference
    for `perplexity`)."""
    import torch

    ids = _token_list(token_ids)
    inputs = torch.tensor([ids], dtype=torch.long)
    with torch.inference_mode():
        logits = hf_model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits[0, :-1]
    loss = torch.nn.functional.cross_entropy(logits.double(), inputs[0, 1:], reduction="mean")
    return math.exp(float(loss))


def greedy_agreement(a: Sequence[int], b: Sequence[int]) -> tuple[int, float]:
    """(number of identical leading tokens, fraction of identical positions) of two generated sequences.

    Positions are counted over the longer sequence (a position only one of them has counts as different); two
    empty sequences agree fully.
    """
    a, b = list(a), list(b)
    leading = 0
    for x, y in zip(a, b):
        if x != y:
            break
        leading += 1
    longest = max(len(a), len(b))
    if longest == 0:
        return 0, 1.0
    return leading, sum(x == y for x, y in zip(a, b)) / longest
