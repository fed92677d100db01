"""`qeff serve` as users meet it: the real server in a subprocess on a loopback port, driven by the official `openai`
client (sync and async) and by `httpx` for the raw cases. Greedy answers equal `generate` on each prompt alone;
embeddings equal `encode`; every bad input gets OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
import jsonschema
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from QEfficient import QEFFAutoModel, QEFFAutoModelForCausalLM
from QEfficient.serving.process import ServerProcess, free_port
from QEfficient.utils.default_models import default_causal_lm

pytestmark = pytest.mark.timeout(900)

MODEL = "SmolLM2-135M-Instruct"
KEY = "test-key"
CTX_LEN = 256
SLOTS = 4
MAX_QUEUED = 6
MAX_STREAMS = 6
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Name three primary colors."]


@pytest.fixture(scope="module")
def server(qeff_home, tmp_path_factory):  # noqa: ANN001, ANN201 - the ServerProcess
    port = free_port()
    command = [sys.executable, "-m", "QEfficient.cli.main", "serve", "--port", str(port), "--ctx-len", str(CTX_LEN),
               "--slots", str(SLOTS), "--max-queued", str(MAX_QUEUED), "--max-streams", str(MAX_STREAMS),
               "--max-body-bytes", "65536", "--api-key", KEY, "--embedding-model"]  # fmt: skip
    process = ServerProcess("qeff serve", command, tmp_path_factory.mktemp("serve") / "qeff-serve.log")
    process.url = f"http://127.0.0.1:{port}"
    try:
        process.wait_ready(f"{process.url}/health", 600)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:  # noqa: ANN001
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference() -> QEFFAutoModelForCausalLM:
    """SmolLM2 compiled on its own (batch 1, no continuous batching): what each request must equal."""
    model = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm())
    model.compile(prefill_seq_len=32, ctx_len=CTX_LEN)
    return model


def solo(reference: QEFFAutoModelForCausalLM, prompt: str, tokens: int, chat: bool = True) -> str:
    return reference.generate(prompts=[prompt], generation_len=tokens, chat=chat).generated_texts[0]


def chat(client: openai.OpenAI, question: str, tokens: int = 24, **kwargs):  # noqa: ANN003, ANN201
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=tokens, **kwargs
    )


def metrics(server) -> dict[str, float]:  # noqa: ANN001
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def idle(server) -> dict[str, float]:  # noqa: ANN001
    """The metrics once no request runs or waits (requests of earlier tests, cancelled by closing their connections,
    end when the server notices the disconnect); bounded."""
    deadline = time.monotonic() + 30
    values = metrics(server)
    while (values["qeff_running_requests"] or values["qeff_queue_depth"]) and time.monotonic() < deadline:
        time.sleep(0.1)
        values = metrics(server)
    assert values["qeff_running_requests"] == 0 and values["qeff_queue_depth"] == 0
    return values


def raw(server, method: str, path: str, **kwargs) -> httpx.Response:  # noqa: ANN001, ANN003
    headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kwargs)


def assert_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error["message"]
    return error


# ---- start-up, health, models ---------------------------------------------------------------------------------


def test_health_before_and_after_load(server) -> None:
    assert server.health_codes[0] == 503 and server.health_codes[-1] == 200
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}  # no API key needed
    lines = server.output().splitlines()
    ready = next(line for line in lines if line.startswith("Serving"))
    assert f"{server.url}/v1" in ready and MODEL in ready
    assert any(line.startswith("Try: curl") and "/v1/chat/completions" in line for line in lines)
    assert not any("it/s]" in line for line in lines)  # no third-party progress bars


def test_models(client) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL, "all-MiniLM-L6-v2"]


# ---- generation equals generate -----------------------------------------------------------------------------


def test_chat_equals_generate(client, reference) -> None:
    out = chat(client, QUESTIONS[0], 24)
    assert out.choices[0].message.content == solo(reference, QUESTIONS[0], 24)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens == len(reference.text_generator(tokenizer=reference.tokenizer).tokenize(
        [QUESTIONS[0]], chat=True)[0])  # fmt: skip
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_chat_stream_equals_generate(client, reference) -> None:
    stream = chat(client, QUESTIONS[1], 32, stream=True, stream_options={"include_usage": True})
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == solo(reference, QUESTIONS[1], 32)
    assert reasons[-1] in ("stop", "length") and all(r is None for r in reasons[:-1])
    assert usage is not None and usage.completion_tokens <= 32


def test_completions_stream_and_not(client, server, reference) -> None:
    prompt = "The capital of France is"
    expected = solo(reference, prompt, 16, chat=False)
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert out.choices[0].text == expected and out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 16
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stream=True) if c.choices
    )  # fmt: skip
    assert streamed == expected
    with httpx.stream("POST", f"{server.url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"prompt": prompt, "max_tokens": 4, "stream": True}) as response:  # fmt: skip
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_requests_arriving_while_others_run_equal_their_solo_runs(server, reference) -> None:
    """Requests join the running batch at different times; each answer equals its prompt's solo greedy run."""
    prompts = QUESTIONS + ["Explain gravity in one sentence.", "What is 2 + 2?"]
    expected = [solo(reference, p, 40) for p in prompts]

    async def run() -> list[str]:
        async_client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)

        async def one(i: int, prompt: str) -> str:
            await asyncio.sleep(0.4 * i)  # arrive while the earlier ones decode
            out = await async_client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=40
            )
            return out.choices[0].message.content

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

    assert asyncio.run(run()) == expected


def test_stop_strings_and_sampling_settings(client, reference) -> None:
    full = solo(reference, QUESTIONS[0], 24)
    stop = full.split()[3]  # a word in the middle of the greedy answer
    out = chat(client, QUESTIONS[0], 24, stop=[stop])
    assert out.choices[0].message.content == full[: full.index(stop)] and out.choices[0].finish_reason == "stop"
    sampled = [
        chat(client, QUESTIONS[2], 16, seed=7, top_p=0.9, extra_body={"top_k": 20}, temperature=0.8)
        .choices[0].message.content for _ in range(2)
    ]  # fmt: skip
    assert sampled[0] == sampled[1]  # the same seed, the same tokens
    many = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, n=3, temperature=1.0,
                                     seed=1, extra_body={"ignore_eos": True})  # fmt: skip
    assert [c.index for c in many.choices] == [0, 1, 2] and many.usage.completion_tokens == 36


def test_structured_output_json_schema(client) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}}
    out = chat(client, "Give the capital of France as JSON.", 64, response_format=response_format)
    jsonschema.validate(json.loads(out.choices[0].message.content), schema)
    messages = [{"role": "system", "content": 'Answer in JSON, like {"answer": "..."}.'},
                {"role": "user", "content": "What is the capital of France?"}]  # fmt: skip
    obj = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=64,
                                         response_format={"type": "json_object"})  # fmt: skip
    assert json.loads(obj.choices[0].message.content)["answer"] == "Paris"
    regex = chat(client, "Pick a number.", 8, extra_body={"guided_regex": "[0-9]{3}"})
    assert regex.choices[0].message.content.isdigit() and len(regex.choices[0].message.content) == 3


def test_prefix_caching_reuses_a_shared_system_prompt(client, reference) -> None:
    system = "You are a terse assistant. " * 12  # ~70 tokens, two whole prefill chunks
    question = "What is the capital of Italy?"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    first = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16)
    again = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16)
    assert again.usage.prompt_tokens_details.cached_tokens >= 64
    assert again.choices[0].message.content == first.choices[0].message.content
    tokenizer = reference.tokenizer
    from QEfficient.generation.text_generation import chat_token_ids

    ids = chat_token_ids(tokenizer, messages)
    expected = reference.generate(prompts=[ids], generation_len=16).generated_ids[0]
    assert again.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)


# ---- embeddings -------------------------------------------------------------------------------------------------


def test_embeddings_equal_encode(client, server, minilm_path) -> None:
    texts = ["The cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell."]
    encoder = QEFFAutoModel.from_pretrained(minilm_path, pooling="mean", normalize=True)
    expected = encoder.encode(texts)
    out = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # the client asks for base64
    got = np.array([d.embedding for d in out.data])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert out.usage.prompt_tokens > len(texts)
    floats = raw(server, "POST", "/v1/embeddings", json={"input": texts[0], "encoding_format": "float"}).json()
    np.testing.assert_allclose(floats["data"][0]["embedding"], expected[0], atol=1e-5)
    error = raw(server, "POST", "/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert_error(error, 404, MODEL)


# ---- cancellation, limits, bad input ------------------------------------------------------------------------


def test_cancelled_stream_frees_its_row(server, client, reference) -> None:
    before = idle(server)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 200,
                            "temperature": 0, "ignore_eos": True, "stream": True}, timeout=60) as response:  # fmt: skip
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
    deadline = time.monotonic() + 5
    while metrics(server)["qeff_running_requests"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = metrics(server)
    assert after["qeff_running_requests"] == 0
    aborted = "qeff_finished_requests_total{finish_reason=abort}"
    assert after[aborted] == before.get(aborted, 0) + 1
    assert after["qeff_generation_tokens_total"] - before["qeff_generation_tokens_total"] < 100
    out = chat(client, QUESTIONS[0], 24)  # the next request is served in full
    assert out.choices[0].message.content == solo(reference, QUESTIONS[0], 24)


def test_queue_full_is_429_with_retry_after(server) -> None:
    body = {"messages": [{"role": "user", "content": "Count to fifty."}], "max_tokens": 48, "ignore_eos": True}

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as http:
            return await asyncio.gather(
                *(http.post(f"{server.url}/v1/chat/completions", json=body) for _ in range(SLOTS + MAX_QUEUED + 4))
            )

    responses = asyncio.run(run())
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429} and codes.count(200) >= SLOTS
    busy = next(r for r in responses if r.status_code == 429)
    assert busy.headers["Retry-After"] == "1"
    assert_error(busy, 429, "busy")
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_too_many_streams_is_429(server) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64, "ignore_eos": True, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(headers=headers, timeout=60) as http:
        open_streams = [http.stream("POST", f"{server.url}/v1/chat/completions", json=body) for _ in range(MAX_STREAMS)]
        responses = [s.__enter__() for s in open_streams]
        try:
            assert all(r.status_code == 200 for r in responses)
            assert_error(http.post(f"{server.url}/v1/chat/completions", json=body), 429, "streams")
        finally:
            for s in open_streams:
                s.__exit__(None, None, None)


def test_bad_requests_get_openai_errors(server, client) -> None:
    with pytest.raises(openai.BadRequestError, match="max_tokens must be at least 1"):
        chat(client, "Hi", 0)
    with pytest.raises(openai.BadRequestError) as long:
        chat(client, "Hi", CTX_LEN)
    assert str(CTX_LEN) in str(long.value) and "max_tokens" in str(long.value)
    with pytest.raises(openai.NotFoundError, match="gpt-4o"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        chat(client, "Hi", 4, logprobs=True)
    with pytest.raises(openai.BadRequestError, match="tools"):
        chat(client, "Hi", 4, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(client, "Hi", 4, temperature=3)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        chat(client, "Hi", 4, response_format={"type": "xml"})
    with pytest.raises(openai.AuthenticationError, match="API key"):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert_error(raw(server, "POST", "/v1/chat/completions", content=b"{not json"), 400, "not valid JSON")
    assert_error(raw(server, "POST", "/v1/chat/completions", json={"messages": []}), 400, "messages")
    assert_error(raw(server, "POST", "/v1/completions", json={"prompt": "x", "frobnicate": 1}), 400, "frobnicate")
    assert_error(raw(server, "POST", "/v1/completions", json={"prompt": [1, 10**9]}), 400, "out of range")
    big = {"prompt": "x" * 70000}
    assert_error(raw(server, "POST", "/v1/completions", json=big), 413, "65536")
    assert_error(raw(server, "GET", "/v1/nothing"), 404)
    assert_error(httpx.get(f"{server.url}/metrics"), 401, "API key")


def test_metrics_move(server, client) -> None:
    before = idle(server)
    chat(client, QUESTIONS[2], 8)
    after = metrics(server)
    ok = "qeff_requests_total{route=/v1/chat/completions,status=200}"
    assert after[ok] == before.get(ok, 0) + 1
    assert after["qeff_generation_tokens_total"] > before["qeff_generation_tokens_total"]
    assert after["qeff_time_to_first_token_seconds_count"] == before["qeff_time_to_first_token_seconds_count"] + 1
    assert after["qeff_inter_token_latency_seconds_count"] > before["qeff_inter_token_latency_seconds_count"]
    assert after["qeff_queue_depth"] == 0 and after["qeff_cache_rows"] == SLOTS
    assert after["qeff_generation_tokens_per_second"] > 0
