"""Speculative decoding on a compiled causal-LM program (docs/speculative_decoding.md).

A drafter proposes up to K next tokens per running row; the target program checks them all in one step of
`K + 1` columns (the row's last token and its drafts), whose logits cover every column (a target compiled with
`compile(num_speculative_tokens=K)` keeps K + 1 logits per row, `LastValidPosition`). Greedy decoding keeps the drafts
up to the first one that differs from the target's argmax and then adds the target's own token, so the output is
exactly plain greedy decoding's. Sampling follows the standard rejection rule (Leviathan et al. 2023, Chen et al.
2023): draft token x, drawn from the draft's distribution q, is kept with probability min(1, p(x) / q(x)); at the
first rejection the token is drawn from norm(max(0, p - q)); when every draft is kept, one more token is drawn from
the target's next distribution. Each emitted token is then distributed exactly as the target's p.

Rejected drafts cost nothing to undo: the cache contract writes each token's key and value at the slot of its
position and masks every slot beyond a query's own position, so the slots of rejected tokens are never read before
the next step writes them again (a model with recurrent state has no such slots and is refused).

Drafters:
- `PromptLookupDrafter`: n-gram matching over the prompt and the output so far (no second model);
- `DraftModelDrafter`: a smaller causal LM with the same vocabulary, its own compiled program and KV cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from QEfficient.generation.sampling import Sampler

if TYPE_CHECKING:
    from QEfficient.generation.text_generation import TextGenerator, _Clock, _Request

SPECULATIVE_METHODS = ("prompt_lookup", "draft")
DEFAULT_NUM_SPECULATIVE_TOKENS = 4


def check_num_speculative_tokens(value: Any) -> int:
    """`value` if it is a valid number of draft tokens per step (an int >= 1), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"num_speculative_tokens must be an int >= 1 (draft tokens per step); got {value!r}.")
    return int(value)


@dataclass
class Draft:
    """A row's proposal: `tokens` (at most K), and `probs` `[len(tokens), V]`, the distribution each token was drawn
    from, or None for a deterministic proposal (a point mass on each token: prompt lookup, or a greedy draft)."""

    tokens: list[int]
    probs: np.ndarray | None = None


def accept_draft(target_logits: np.ndarray, draft: Draft, sampler: Sampler) -> list[int]:
    """The tokens a row gains from one verify step: the accepted prefix of `draft.tokens`, then one token of the
    target's (the correction at the first rejection, or the next token when every draft is accepted).

    `target_logits` `[len(draft.tokens) + 1, V]`: the target's logits at the row's last token and at each draft.
    Greedy (`sampler.params.do_sample` False): drafts are kept while they equal the target's argmax. Sampling: the
    rejection rule of the module docstring, with the sampler's own random generator, on the distributions after
    the sampler's temperature, top-k and top-p.
    """
    n = len(draft.tokens)
    if target_logits.shape[0] != n + 1:
        raise ValueError(f"Verifying {n} draft tokens needs {n + 1} rows of logits; got {target_logits.shape[0]}.")
    if not sampler.params.do_sample:
        best = target_logits.argmax(axis=-1)
        kept = 0
        while kept < n and draft.tokens[kept] == int(best[kept]):
            kept += 1
        return [*draft.tokens[:kept], int(best[kept])]
    p = sampler.probs(target_logits)
    for i, token in enumerate(draft.tokens):
        q_token = 1.0 if draft.probs is None else float(draft.probs[i, token])
        if q_token > 0 and sampler.rng.random() < min(1.0, p[i, token] / q_token):
            continue
        if draft.probs is None:  # max(0, p - one_hot(token)): p without the rejected token
            residual = p[i].copy()
            residual[token] = 0.0
        else:
            residual = np.maximum(p[i] - draft.probs[i], 0.0)
        total = residual.sum()
        residual = residual / total if total > 0 else p[i]  # total 0 only when p == q up to rounding
        return [*draft.tokens[:i], int(sampler.rng.choice(len(residual), p=residual))]
    return [*draft.tokens, int(sampler.rng.choice(p.shape[-1], p=p[n]))]


class Drafter:
    """Proposes draft tokens for the running rows of a generation. Subclasses implement `propose`; a drafter with
    its own program also prefills prompts into its cache rows (`prefill`)."""

    name = "drafter"

    def begin(self, width: int, continuous: bool) -> None:
        """A new set of `width` rows (a round of prompts, or the cache rows of continuous batching)."""

    def prefill(self, prompts: dict[int, list[int]], continuous: bool) -> None:
        """Prompts entering rows `{row: prompt ids}` (all rows of a round, or one cache row)."""

    def release(self, row: int) -> None:
        """Row `row` finished; a later prompt may take it."""

    def propose(self, sequences: dict[int, list[int]], budgets: dict[int, int], sampler: Sampler) -> dict[int, Draft]:
        """Up to `budgets[row]` draft tokens to follow each running row's `sequences[row]` (prompt + output)."""
        raise NotImplementedError


class PromptLookupDrafter(Drafter):
    """Prompt lookup decoding: find the latest earlier occurrence of the sequence's last n tokens (n from
    `max_ngram` down to `min_ngram`) in the prompt and output so far, and propose the tokens that followed it. No
    second model; it pays off when the output repeats the input (summaries, rewrites, code edits, extraction).
    `min_ngram=2` (the default) proposes nothing on a one-token match, which in free text is mostly wrong."""

    name = "prompt_lookup"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"Prompt lookup needs 1 <= min_ngram <= max_ngram; got {min_ngram}, {max_ngram}.")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def lookup(self, tokens: Sequence[int], k: int) -> list[int]:
        """At most `k` tokens that followed the latest earlier occurrence of the longest matching suffix of `tokens`
        (empty when no suffix of at least `min_ngram` tokens occurs earlier)."""
        if k < 1 or len(tokens) < 2:
            return []
        array = np.asarray(tokens, dtype=np.int64)
        for n in range(min(self.max_ngram, len(array) - 1), self.min_ngram - 1, -1):
            # windows starting at i = 0 .. L-n-1: each is followed by at least one token
            windows = np.lib.stride_tricks.sliding_window_view(array[:-1], n)
            hits = np.flatnonzero((windows == array[-n:]).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n
                return array[start : start + k].tolist()
        return []

    def propose(self, sequences: dict[int, list[int]], budgets: dict[int, int], sampler: Sampler) -> dict[int, Draft]:
        return {row: Draft(self.lookup(seq, budgets[row])) for row, seq in sequences.items()}


class DraftModelDrafter(Drafter):
    """A smaller causal LM with the target's vocabulary, run on its own compiled program (`generator`, compiled with
    the target's batch size, or full batch size for continuous batching, and a context at least the target's).

    Its cache row follows the target's: each proposal first feeds the tokens the draft has not seen (the target's
    last token, and the last draft when all were accepted: the draft never ran on it), then runs one decode step
    per draft token. Tokens it saw that the target rejected sit at positions the next feed overwrites. With sampling,
    it draws its tokens from its own distribution under the same sampling parameters, and hands that distribution
    to the rejection rule."""

    name = "draft"

    def __init__(self, generator: TextGenerator) -> None:
        self.generator = generator
        self.state: Any = None
        self.width = 0
        self.continuous = False
        self.fed: dict[int, list[int]] = {}  # per row: the tokens in the draft's cache row, position by position
        self.synced: dict[int, int] = {}  # per row: how many of them are known to equal the target's sequence

    def begin(self, width: int, continuous: bool) -> None:
        self.width, self.continuous = width, continuous
        spec = {"batch_size": width, "seq_len": 1}
        self.state = self.generator.program.new_state({**spec, "full_batch_size": width} if continuous else spec)
        self.fed, self.synced = {}, {}

    def prefill(self, prompts: dict[int, list[int]], continuous: bool) -> None:
        if continuous:
            for row, ids in prompts.items():
                self.generator._prefill(self.state, [ids], np.array([[row]]))
        else:
            rows = [prompts.get(r) for r in range(self.width)]
            self.generator._prefill(self.state, rows, None)
        for row, ids in prompts.items():
            self.fed[row], self.synced[row] = list(ids), len(ids)

    def release(self, row: int) -> None:
        self.fed.pop(row, None)
        self.synced.pop(row, None)

    def _run(self, tokens: dict[int, tuple[int, int]]) -> np.ndarray:
        """One decode step of the draft program: `{row: (token, position)}`, other rows padding; logits `[W, V]`."""
        ids = np.zeros((self.width, 1), dtype=np.int64)
        positions = np.full((self.width, 1), -1, dtype=np.int64)
        for row, (token, position) in tokens.items():
            ids[row, 0], positions[row, 0] = token, position
            self.fed[row].append(token)
        batch_index = np.arange(self.width).reshape(-1, 1) if self.continuous else None
        return self.generator.step(self.state, ids, positions, batch_index)

    def propose(self, sequences: dict[int, list[int]], budgets: dict[int, int], sampler: Sampler) -> dict[int, Draft]:
        unseen: dict[int, list[int]] = {}
        for row, seq in sequences.items():
            if budgets[row] < 1:
                continue
            fed = self.fed[row]
            same = self.synced[row]
            limit = min(len(fed), len(seq) - 1)  # the last token is always fed: its logits give the first draft
            while same < limit and fed[same] == seq[same]:
                same += 1
            del fed[same:]
            unseen[row] = seq[same:]
        while any(len(tokens) > 1 for tokens in unseen.values()):  # catch up, one token per row and step
            self._run({row: (tokens.pop(0), len(self.fed[row])) for row, tokens in unseen.items() if len(tokens) > 1})
        drafts = {row: Draft([], [] if sampler.params.do_sample else None) for row in sequences}
        current = {row: tokens[0] for row, tokens in unseen.items()}
        for i in range(max((budgets[row] for row in unseen), default=0)):
            rows = [row for row in unseen if i < budgets[row]]
            logits = self._run({row: (current[row], len(self.fed[row])) for row in rows})
            if sampler.params.do_sample:
                probs = sampler.probs(logits[rows])
                chosen = [int(sampler.rng.choice(len(p), p=p)) for p in probs]
            else:
                probs, chosen = None, [int(t) for t in logits[rows].argmax(axis=-1)]
            for j, row in enumerate(rows):
                drafts[row].tokens.append(chosen[j])
                if probs is not None:
                    drafts[row].probs.append(probs[j])
                current[row] = chosen[j]
        for row, seq in sequences.items():
            if row in unseen:
                self.synced[row] = len(seq)  # the draft's row now holds the sequence (and the drafts after it)
            if drafts[row].probs is not None:
                drafts[row].probs = np.stack(drafts[row].probs) if drafts[row].tokens else None
        return drafts


@dataclass
class SpeculativeConfig:
    """How `TextGenerator.generate` speculates: a drafter and K, the most draft tokens per row and step (at most
    the target program's compiled `num_speculative_tokens`)."""

    drafter: Drafter
    num_speculative_tokens: int = DEFAULT_NUM_SPECULATIVE_TOKENS

    def __post_init__(self) -> None:
        check_num_speculative_tokens(self.num_speculative_tokens)


@dataclass
class _Row:
    request: _Request
    sequence: list[int] = field(default_factory=list)  # prompt + generated


class SpeculativeRun:
    """One `generate` call's speculative decoding on `generator`'s target program (compiled for K_c >= K draft
    tokens: verify specialisations of 2, 4, ... and K_c + 1 columns; each step runs the narrowest that holds every
    row's drafts, or a plain decode step when no row has any). Rounds of `batch_size` prompts, or continuous
    batching."""

    def __init__(
        self,
        generator: TextGenerator,
        config: SpeculativeConfig,
        sampler: Sampler,
        stop_strings: Sequence[str],
        streamer: Any,
        clock: _Clock,
    ) -> None:
        compiled = generator.num_speculative_tokens
        if not compiled:
            raise ValueError(
                "This program has no verify step: compile the target with compile(..., num_speculative_tokens=K) "
                "for speculative decoding."
            )
        if config.num_speculative_tokens > compiled:
            raise ValueError(
                f"num_speculative_tokens={config.num_speculative_tokens} exceeds the {compiled} the target program "
                f"was compiled for (compile(..., num_speculative_tokens={config.num_speculative_tokens}))."
            )
        if generator.token_inputs:
            raise ValueError(
                "Speculative decoding takes text-only programs: this one takes per-token inputs "
                f"{sorted(generator.token_inputs)}."
            )
        self.generator, self.config, self.sampler = generator, config, sampler
        self.stop_strings, self.streamer, self.clock = stop_strings, streamer, clock
        self.compiled = compiled

    # ---- one round of batch_size prompts, or continuous batching ----------------------------------------

    def round(self, requests: list[_Request]) -> None:
        """Up to `batch_size` prompts together: prefill all, then speculate until each one stops."""
        gen = self.generator
        width = gen.batch_size
        state = gen.program.new_state({"batch_size": width, "seq_len": 1})
        self.config.drafter.begin(width, continuous=False)
        if self.streamer is not None:
            self.streamer.put(np.array(requests[0].prompt_ids))
        t0 = time.perf_counter()
        rows: list[list[int] | None] = [r.prompt_ids for r in requests] + [None] * (width - len(requests))
        logits = gen._prefill(state, rows, None)
        self.config.drafter.prefill({i: r.prompt_ids for i, r in enumerate(requests)}, continuous=False)
        self.clock.add_prefill(time.perf_counter() - t0)
        tokens = self.sampler(logits)
        running: dict[int, _Row] = {}
        for i, request in enumerate(requests):
            if not gen._accept(request, int(tokens[i]), self.stop_strings, self.streamer):
                running[i] = _Row(request, [*request.prompt_ids, *request.generated])
        self.clock.mark_first_token()
        self._decode(state, width, running, None)
        if self.streamer is not None:
            self.streamer.end()

    def continuous(self, requests: list[_Request]) -> None:
        """Continuous batching over `full_batch_size` cache rows: a finished row takes the next waiting prompt."""
        gen = self.generator
        slots = gen.full_batch_size
        state = gen.program.new_state({"batch_size": slots, "seq_len": 1, "full_batch_size": slots})
        self.config.drafter.begin(slots, continuous=True)
        waiting = list(reversed(requests))
        running: dict[int, _Row] = {}

        def admit(slot: int) -> None:
            while waiting:
                request = waiting.pop()
                if self.streamer is not None:
                    self.streamer.put(np.array(request.prompt_ids))
                t0 = time.perf_counter()
                logits = gen._prefill(state, [request.prompt_ids], np.array([[slot]]))
                self.config.drafter.prefill({slot: request.prompt_ids}, continuous=True)
                self.clock.add_prefill(time.perf_counter() - t0)
                finished = gen._accept(request, int(self.sampler(logits)[0]), self.stop_strings, self.streamer)
                self.clock.mark_first_token()
                if not finished:
                    running[slot] = _Row(request, [*request.prompt_ids, *request.generated])
                    return

        for slot in range(slots):
            admit(slot)
        self._decode(state, slots, running, admit)
        if self.streamer is not None:
            self.streamer.end()

    # ---- the decode loop --------------------------------------------------------------------------------

    def _decode(self, state: Any, width: int, running: dict[int, _Row], admit: Callable[[int], None] | None) -> None:
        """Draft, verify, accept, until no row runs (`admit(row)` refills a finished row with continuous batching)."""
        gen, drafter, k = self.generator, self.config.drafter, self.config.num_speculative_tokens
        batch_index = np.arange(width).reshape(-1, 1) if admit is not None else None
        # the step widths compiled for this batch: decode (1), the verify widths, the prefill chunk
        widths = sorted({int(s["seq_len"]) for s in gen.program.specializations if s.get("batch_size") == width})
        while running:
            t0 = time.perf_counter()
            # a row gains at most drafts + 1 tokens, and must not run past its new-token budget (nor ctx_len)
            budgets = {
                row: max(0, min(k, r.request.max_new_tokens - len(r.request.generated) - 1))
                for row, r in running.items()
            }
            drafts = drafter.propose({row: r.sequence for row, r in running.items()}, budgets, self.sampler)
            needed = 1 + max(len(drafts[row].tokens) for row in running)
            columns = next(w for w in widths if w >= needed)  # the narrowest compiled step that holds every row
            ids = np.zeros((width, columns), dtype=np.int64)
            positions = np.full((width, columns), -1, dtype=np.int64)
            for row, r in running.items():
                step_tokens = [r.sequence[-1], *drafts[row].tokens]
                first = len(r.sequence) - 1  # the position of the row's last token
                ids[row, : len(step_tokens)] = step_tokens
                positions[row, : len(step_tokens)] = np.arange(first, first + len(step_tokens))
            logits = gen.run_logits(state, ids, positions, batch_index)  # [W, n, V]: n columns up to the last valid
            kept = logits.shape[1]
            produced, finished = 0, []
            for row, r in running.items():
                draft = drafts[row]
                valid = len(draft.tokens) + 1
                new_tokens = accept_draft(logits[row, kept - valid :], draft, self.sampler)
                self.clock.add_speculation(len(draft.tokens), len(new_tokens) - 1)
                for token in new_tokens:
                    produced += 1
                    r.sequence.append(token)
                    if gen._accept(r.request, token, self.stop_strings, self.streamer):
                        finished.append(row)
                        break
            self.clock.add_decode(time.perf_counter() - t0, produced, rows=len(running))
            for row in finished:
                del running[row]
                drafter.release(row)
                if admit is not None:
                    admit(row)
