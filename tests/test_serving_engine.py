"""The serving engine on tiny random models: requests that arrive while others run, share prefixes, are cancelled or
sample each get what `generate` gives their prompt alone (whose greedy tokens equal HF's: test_causal_lm.py)."""

from __future__ import annotations

import asyncio

import pytest

from QEfficient import QEFFAutoModelForCausalLM
from QEfficient.generation.sampling import SamplingParams
from QEfficient.serving.engine import EngineRequest, QueueFull, RequestOutput, ServingEngine
from QEfficient.serving.prefix_cache import Placement, PrefixCache
from tests.tiny_models import tiny_decoder

PREFIX = "the capital of france is a city with a long history, many museums and even more people living there"
PROMPTS = [PREFIX, PREFIX + " and in summer", "hello world", PREFIX + " but", "five words are in here"]
ROWS = 3


def compiled(model_type: str, continuous: bool) -> QEFFAutoModelForCausalLM:
    model = QEFFAutoModelForCausalLM(tiny_decoder(model_type), continuous_batching=continuous)
    model.compile(prefill_seq_len=8, ctx_len=64, full_batch_size=ROWS if continuous else None)
    return model


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def models(request, tokenizer) -> tuple[QEFFAutoModelForCausalLM, QEFFAutoModelForCausalLM]:
    """(continuous-batching program, solo program) of one architecture; gemma2 has sliding-window layers."""
    return compiled(request.param, True), compiled(request.param, False)


def ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt)["input_ids"]


def solo(model: QEFFAutoModelForCausalLM, tokenizer, prompt: str, tokens: int) -> list[int]:
    return model.generate(tokenizer, [prompt], generation_len=tokens).generated_ids[0]


async def serve(engine: ServingEngine, requests: list[EngineRequest], delays: list[float]) -> list[list[RequestOutput]]:
    """Submit each request after its delay; every request's outputs."""

    async def one(request: EngineRequest, delay: float) -> list[RequestOutput]:
        await asyncio.sleep(delay)
        return [output async for output in engine.submit(request)]

    return await asyncio.gather(*(one(r, d) for r, d in zip(requests, delays)))


def tokens_of(outputs: list[RequestOutput]) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def engine_for(model: QEFFAutoModelForCausalLM, tokenizer, **kwargs) -> ServingEngine:  # noqa: ANN003
    return ServingEngine(model.text_generator(tokenizer=tokenizer), **kwargs).start()


@pytest.mark.parametrize("prefix_caching", [True, False], ids=["prefix-cache", "no-prefix-cache"])
def test_arrivals_and_shared_prefixes_equal_solo_runs(models, tokenizer, prefix_caching: bool) -> None:
    batched, alone = models
    lengths = [12, 20, 7, 15, 9]
    expected = [solo(alone, tokenizer, p, n) for p, n in zip(PROMPTS, lengths)]
    engine = engine_for(batched, tokenizer, prefix_caching=prefix_caching)
    try:
        requests = [EngineRequest(ids(tokenizer, p), n) for p, n in zip(PROMPTS, lengths)]
        outputs = asyncio.run(serve(engine, requests, [0.0, 0.0, 0.05, 0.1, 0.1]))
        assert [tokens_of(o) for o in outputs] == expected
        assert all(o[-1].finish_reason == "length" and o[-1].completion_tokens == n for o, n in zip(outputs, lengths))
        texts = ["".join(x.text for x in o) for o in outputs]
        assert texts == [tokenizer.decode(e, skip_special_tokens=True) for e in expected]
        cached = [o[-1].cached_tokens for o in outputs]
        if prefix_caching:
            assert sum(cached) >= 16  # the shared prefix came from the cache at least twice
            again = asyncio.run(serve(engine, [EngineRequest(ids(tokenizer, PROMPTS[1]), 20)], [0.0]))[0]
            assert tokens_of(again) == expected[1] and again[-1].cached_tokens >= 16  # a free row kept it
        else:
            assert cached == [0] * len(PROMPTS)
    finally:
        engine.shutdown()


def test_prefix_caching_covers_sliding_window_layers(models, tokenizer) -> None:
    """Sliding-window layers keep a slot per position too (the window is a mask), so their rows are reusable."""
    batched, _ = models
    assert ServingEngine(batched.text_generator(tokenizer=tokenizer)).prefix_caching


def test_cancel_frees_the_row(models, tokenizer) -> None:
    batched, alone = models
    engine = engine_for(batched, tokenizer)

    async def run() -> tuple[list[RequestOutput], list[list[RequestOutput]]]:
        long = engine.submit(EngineRequest(ids(tokenizer, PROMPTS[0]), 40, request_id="long"))
        seen = []
        async for output in long:
            seen.append(output)
            if len(seen) == 3:
                engine.abort("long")
        after = await serve(engine, [EngineRequest(ids(tokenizer, p), 10) for p in PROMPTS[2:2 + ROWS]], [0, 0, 0])
        return seen, after

    try:
        seen, after = asyncio.run(run())
        assert seen[-1].finish_reason == "abort" and seen[-1].completion_tokens < 40  # ended early
        assert [tokens_of(o) for o in after] == [solo(alone, tokenizer, p, 10) for p in PROMPTS[2:2 + ROWS]]
        assert engine.metrics.running._value.get() == 0
    finally:
        engine.shutdown()


@pytest.mark.parametrize("models", ["llama"], indirect=True)  # the tiny gemma2 says only special tokens: no text
def test_sampling_seeds_stop_strings_and_limits(models, tokenizer) -> None:
    batched, alone = models
    engine = engine_for(batched, tokenizer, max_queued=2)
    prompt = ids(tokenizer, PROMPTS[2])
    sampled = SamplingParams(do_sample=True, temperature=0.9, top_k=50, top_p=0.95, seed=3)
    greedy_text = tokenizer.decode(solo(alone, tokenizer, PROMPTS[2], 12), skip_special_tokens=True)
    stop = greedy_text[len(greedy_text) // 2 :][:3]  # a piece from the middle of the greedy answer
    assert stop.strip()
    try:
        requests = [
            EngineRequest(prompt, 12, sampled),
            EngineRequest(prompt, 12, sampled),
            EngineRequest(prompt, 12, stop=[stop]),
            EngineRequest(prompt, 12, presence_penalty=1.5),
        ]
        a, b, stopped, penalised = asyncio.run(serve(engine, requests, [0, 0.05, 0.1, 0.1]))
        assert tokens_of(a) == tokens_of(b)  # one seed, one answer, whatever runs beside it
        assert "".join(o.text for o in stopped) == greedy_text[: greedy_text.index(stop)]
        assert stopped[-1].finish_reason == "stop"
        assert len(tokens_of(penalised)) == 12

        with pytest.raises(ValueError, match="more than the context of 64"):
            asyncio.run(serve(engine, [EngineRequest(prompt, 64)], [0]))

        async def flood() -> None:
            streams = []
            try:
                for _ in range(ROWS + 10):  # the loop admits at most one request per step: the queue fills
                    streams.append(engine.submit(EngineRequest(prompt, 30)))
            finally:
                for s in streams:
                    engine.abort(s.request_id)

        with pytest.raises(QueueFull, match="limit is 2"):
            asyncio.run(flood())
    finally:
        engine.shutdown()


def test_prefix_cache_placement() -> None:
    """Reuse to the token, never the last one; whole chunks where the chunks after it would pass the context; a free
    row that holds the prefix is taken as it is, a running one is copied, else the least recently used row."""
    cache = PrefixCache(rows=3, chunk=8, ctx_len=32)
    cache.written(0, range(30))
    cache.written(1, [7, 7, 7])
    assert cache.place(list(range(25)) + [99] * 5, free=[0, 1, 2]) == Placement(0, 24)  # 25 + one chunk > 32
    cache.written(0, [99] * 5)
    assert cache.tokens[0] == list(range(24)) + [99] * 5
    assert cache.place(list(range(20)) + [5], free=[1, 2]) == Placement(2, 20, copy_from=0)  # 20 + 8 fits
    assert cache.tokens[2] == list(range(20))
    cache.release(2)
    assert cache.place(list(range(20)) + [42], free=[1, 2]) == Placement(2, 20)  # a free row holds it: no copy
    assert cache.place([1, 2, 3], free=[1]) == Placement(1, 0)
    assert PrefixCache(rows=1, chunk=8, ctx_len=64, enabled=False).place([1, 2, 3], free=[0]) == Placement(0, 0)


def test_prefix_cache_reuses_a_prefix_only_on_its_adapter() -> None:
    """A row's keys and values depend on the LoRA adapter it was filled with: a prompt on another adapter (or on the
    base model) does not reuse them, one on the same adapter does."""
    cache = PrefixCache(rows=2, chunk=4, ctx_len=32)
    assert cache.place(list(range(10)), free=[0, 1], adapter=1) == Placement(0, 0)
    cache.written(0, range(10))
    assert cache.place(list(range(10)) + [5], free=[1], adapter=-1) == Placement(1, 0)  # the base model: no reuse
    cache.written(1, list(range(10)) + [5])
    cache.release(0)
    assert cache.place(list(range(10)) + [6], free=[0], adapter=1) == Placement(0, 10)  # its own adapter's row
    assert cache.adapters == [1, -1]
