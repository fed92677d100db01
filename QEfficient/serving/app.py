"""The OpenAI-compatible HTTP API over the serving engine (FastAPI).

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (streamed as server-sent events or not),
`POST /v1/embeddings`, `GET /v1/models`, `GET /health` (200 once the models are loaded, 503 before) and
`GET /metrics` (Prometheus). The app only translates: it checks and tokenises a request, submits one engine request
per choice, and turns the engine's outputs into OpenAI's JSON. The models load in a thread after the server starts,
so `/health` answers from the first moment.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.background import BackgroundTask

from QEfficient.generation.sampling import SamplingParams
from QEfficient.generation.text_generation import chat_token_ids
from QEfficient.serving.engine import EngineRequest, EngineStopped, QueueFull, RequestOutput, RequestStream
from QEfficient.serving.loading import ServeConfig, ServedModels, load_models
from QEfficient.serving.metrics import ServingMetrics
from QEfficient.serving.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    _Sampling,
)

logger = logging.getLogger(__name__)

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/health", "/metrics")


class ServerState:
    """The app's models (None until loaded), its metrics and its limits."""

    def __init__(self, config: ServeConfig, loader: Callable[[ServeConfig, ServingMetrics], ServedModels]) -> None:
        self.config = config
        self.loader = loader
        self.metrics = ServingMetrics()
        self.models: ServedModels | None = None
        self.load_error: BaseException | None = None
        self.streams = 0  # open streaming responses
        self.ready = threading.Event()

    def load(self) -> None:
        try:
            self.models = self.loader(self.config, self.metrics)
        except BaseException as exc:  # noqa: BLE001 - reported by /health and every route
            logger.exception("Loading the models failed")
            self.load_error = exc
        self.ready.set()

    def served(self) -> ServedModels:
        if self.models is not None and self.models.engine.alive:
            return self.models
        if self.load_error is not None:
            raise APIError(503, f"The server could not load its model: {self.load_error}", "server_error")
        if self.models is not None:
            raise APIError(503, f"The engine has stopped: {self.models.engine.error}", "server_error")
        raise APIError(503, "The model is still loading; retry when GET /health answers 200.", "server_error")


class _Limits:
    """ASGI middleware: the request body size limit, and counting responses by route and status for /metrics."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        limit = self.state.config.max_body_bytes
        counter = self.state.metrics.requests

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                counter.labels(route, str(message["status"])).inc()
            await send(message)

        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            too_large = _too_large(int(length), limit)
            return await _error_response(too_large)(scope, receive, counted_send)
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(received, limit)
            return message

        await self.app(scope, limited_receive, counted_send)


def _too_large(size: int, limit: int) -> APIError:
    return APIError(
        413, f"The request body has {size} bytes or more; the limit is {limit} (qeff serve --max-body-bytes)."
    )


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def build_app(
    config: ServeConfig, loader: Callable[[ServeConfig, ServingMetrics], ServedModels] = load_models
) -> FastAPI:
    """The OpenAI-compatible app for `config`; its models load in a thread when the app starts."""
    state = ServerState(config, loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=state.load, name="qeff-load", daemon=True).start()
        yield
        if state.models is not None:
            state.models.close()

    app = FastAPI(title="QEfficient", lifespan=lifespan)
    app.state.qeff = state
    app.add_middleware(_Limits, state=state)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(APIError(404, f"No route {request.method} {request.url.path}.", code="not_found"))

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(APIError(405, f"{request.method} is not allowed on {request.url.path}."))

    def authorize(request: Request) -> None:
        key = config.api_key
        if key and request.headers.get("authorization", "") != f"Bearer {key}":
            raise APIError(
                401,
                "Missing or wrong API key: send the header 'Authorization: Bearer <key>' with the key the server "
                "was started with (--api-key).",
                code="invalid_api_key",
            )

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.models is not None and state.models.engine.alive:
            return JSONResponse({"status": "ok"})
        if state.load_error is not None or state.models is not None:
            error = state.load_error or state.models.engine.error
            return JSONResponse({"status": "failed", "error": str(error)}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        authorize(request)
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        authorize(request)
        models = state.served()
        created = int(time.time())
        cards = [{"id": models.name, "object": "model", "created": created, "owned_by": "qefficient",
                  "max_model_len": models.engine.ctx_len}]  # fmt: skip
        for adapter in models.adapters:  # LoRA adapters on the same program, as vLLM lists them
            cards.append({"id": adapter, "object": "model", "created": created, "owned_by": "qefficient",
                          "parent": models.name, "max_model_len": models.engine.ctx_len})  # fmt: skip
        if models.embedder:
            cards.append({"id": models.embedder.name, "object": "model", "created": created, "owned_by": "qefficient"})
        return {"object": "list", "data": cards}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        authorize(request)
        body = await _parse(request, ChatCompletionRequest)
        models = _generation_model(state, body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            prompt = chat_token_ids(models.engine.tokenizer, messages)
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages") from exc
        return await _generate(request, state, models, body, [prompt], chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        authorize(request)
        body = await _parse(request, CompletionRequest)
        models = _generation_model(state, body.model)
        prompts = []
        for prompt in body.prompts():
            ids = models.engine.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
            if not ids:
                raise APIError(400, "A prompt is empty; every prompt needs at least one token.", param="prompt")
            if not all(0 <= t < models.vocab_size for t in ids):
                bad = next(t for t in ids if not 0 <= t < models.vocab_size)
                raise APIError(400, f"Token id {bad} is out of range: this model's vocabulary has ids 0 to "
                                    f"{models.vocab_size - 1}.", param="prompt")  # fmt: skip
            prompts.append(ids)
        if not prompts:
            raise APIError(400, "prompt is an empty list; send at least one prompt.", param="prompt")
        return await _generate(request, state, models, body, prompts, chat=False)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict:
        authorize(request)
        body = await _parse(request, EmbeddingRequest)
        models = state.served()
        if models.embedder is None:
            raise APIError(
                404,
                "This server has no embedding model: start it with --embedding-model (all-MiniLM-L6-v2 by default).",
                param="model",
                code="model_not_found",
            )
        if body.model is not None and body.model != models.embedder.name:
            raise _unknown_model(body.model, models)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(isinstance(t, str) for t in texts):
            raise APIError(400, "input must be a string or a non-empty list of strings (token ids are not taken).",
                           param="input")  # fmt: skip
        if any(not t for t in texts):
            raise APIError(400, "input holds an empty string; every input needs text.", param="input")
        try:
            vectors = await models.embedder.encode(texts)
        except ValueError as exc:
            raise APIError(400, str(exc), param="input") from exc
        if body.dimensions is not None and body.dimensions != vectors.shape[1]:
            raise APIError(400, f"dimensions={body.dimensions}: this model's embeddings have {vectors.shape[1]}; "
                                "leave dimensions out.", param="dimensions")  # fmt: skip
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
                if body.encoding_format == "base64"
                else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        tokens = models.embedder.count_tokens(texts)
        return {
            "object": "list",
            "data": data,
            "model": models.embedder.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


async def _parse(request: Request, model: type) -> Any:
    """The request body as `model`: malformed JSON, a wrong field or an unsupported parameter is a 400 naming it."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.")
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise APIError(400, f"Invalid request: {problems}.", param=param) from exc
    unsupported = body.unsupported()
    if unsupported:
        raise APIError(
            400,
            f"Unsupported parameter(s): {', '.join(unsupported)}. This server does not implement them; leave them "
            "out of the request.",
            param=unsupported[0],
            code="unsupported_parameter",
        )
    return body


def _unknown_model(name: str, models: ServedModels) -> APIError:
    served = ", ".join(repr(n) for n in models.names())
    return APIError(
        404, f"The model {name!r} does not exist here; this server serves {served}.", param="model",
        code="model_not_found",
    )  # fmt: skip


def _generation_model(state: ServerState, name: str | None) -> ServedModels:
    models = state.served()
    if name is not None and name != models.name and name not in models.adapters:
        if models.embedder is not None and name == models.embedder.name:
            raise APIError(400, f"{name!r} is an embedding model: use POST /v1/embeddings.", param="model")
        raise _unknown_model(name, models)
    return models


def _engine_requests(models: ServedModels, body: _Sampling, prompts: list[list[int]], base_id: str) -> list:
    """One engine request per prompt and choice (`n`), checked against the context before any is queued."""
    engine = models.engine
    limit = body.token_limit()
    name = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
    temperature = 1.0 if body.temperature is None else body.temperature
    requests = []
    for p, prompt in enumerate(prompts):
        try:
            max_tokens = engine.check(len(prompt), limit, name)
        except ValueError as exc:
            raise APIError(400, str(exc), param=name) from exc
        for c in range(body.n):
            seed = None if body.seed is None else body.seed + c
            sampling = (
                SamplingParams()
                if temperature == 0
                else SamplingParams(True, temperature, max(0, body.top_k or 0), body.top_p or 1.0, seed)
            )
            try:
                constraint = (
                    models.grammar.constraint(body.response_format, body.guided_regex)
                    if body.response_format or body.guided_regex
                    else None
                )
            except ValueError as exc:
                param = "response_format" if body.response_format else "guided_regex"
                raise APIError(400, str(exc), param=param) from exc
            requests.append(
                EngineRequest(
                    prompt,
                    max_tokens,
                    sampling,
                    body.stop_strings(),
                    body.presence_penalty,
                    body.frequency_penalty,
                    body.ignore_eos,
                    constraint,
                    f"{base_id}-{p}-{c}",
                    models.adapters.get(body.model, -1),  # a LoRA adapter served as its own model name
                )
            )
    return requests


def _submit(models: ServedModels, requests: list[EngineRequest]) -> list[RequestStream]:
    """Queue every request, or none: a full queue is a 429 with Retry-After."""
    streams: list[RequestStream] = []
    try:
        for request in requests:
            streams.append(models.engine.submit(request))
    except (QueueFull, EngineStopped, ValueError) as exc:
        for stream in streams:
            models.engine.abort(stream.request_id)
        if isinstance(exc, QueueFull):
            raise APIError(429, f"The server is busy: {exc} Retry later.", "rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from exc  # fmt: skip
        if isinstance(exc, EngineStopped):
            raise APIError(503, str(exc), "server_error") from exc
        raise APIError(400, str(exc)) from exc
    return streams


async def _merged(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The outputs of several requests as they come, each with its request's index."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue[tuple[int, RequestOutput]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        async for output in stream:
            queue.put_nowait((index, output))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    unfinished = len(streams)
    try:
        while unfinished:
            index, output = await queue.get()
            unfinished -= output.finish_reason is not None
            yield index, output
    finally:
        for task in tasks:
            task.cancel()


def _usage(finals: list[RequestOutput], prompts: int) -> dict[str, Any]:
    """OpenAI's usage: each prompt counted once, every choice's completion tokens."""
    per_choice = len(finals) // prompts
    prompt_tokens = sum(f.prompt_tokens for f in finals[::per_choice])
    completion = sum(f.completion_tokens for f in finals)
    cached = sum(f.cached_tokens for f in finals[::per_choice])
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


async def _generate(
    request: Request, state: ServerState, models: ServedModels, body: _Sampling, prompts: list[list[int]], chat: bool
) -> Response:
    """Run the choices of a chat or completion request; answer as one JSON body or as server-sent events."""
    base_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    engine_requests = _engine_requests(models, body, prompts, base_id)
    if body.stream and state.streams >= state.config.max_streams:
        raise APIError(429, f"{state.streams} streams are open, the limit (--max-streams); retry later.",
                       "rate_limit_error", code="too_many_streams", headers={"Retry-After": "1"})  # fmt: skip
    streams = _submit(models, engine_requests)
    ids = [s.request_id for s in streams]
    head = {"id": base_id, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": models.name}  # fmt: skip

    finals: list[RequestOutput | None] = [None] * len(streams)

    def abort_all() -> None:
        for request_id in ids:
            models.engine.abort(request_id)

    if body.stream:
        guard = _OpenStream(state, finals, abort_all)  # counted now: no await since the limit was checked
        return StreamingResponse(
            _event_stream(streams, finals, head, chat, body.include_usage(), len(prompts), guard),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(guard.close),
        )

    texts = [""] * len(streams)

    async def collect() -> None:
        async for index, output in _merged(streams):
            texts[index] += output.text
            if output.finish_reason is not None:
                finals[index] = output

    async def client_gone() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.2)

    work, watch = asyncio.create_task(collect()), asyncio.create_task(client_gone())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():  # the client went away: free its rows
            work.cancel()
            abort_all()
    if not work.done() or work.cancelled():
        return Response(status_code=499)
    work.result()
    errors = [f.error for f in finals if f is not None and f.error]
    if errors:
        raise APIError(500, f"Generation failed: {errors[0]}", "server_error")
    choices = []
    for i, (text, final) in enumerate(zip(texts, finals)):
        choice: dict[str, Any] = {"index": i, "finish_reason": final.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choices.append(choice)
    return JSONResponse({**head, "choices": choices, "usage": _usage(finals, len(prompts))})


class _OpenStream:
    """One open streaming response: counted against --max-streams until `close`, which also frees the rows of the
    choices that did not finish. A response can end in several ways (its generator finishes or is cancelled, the
    client leaves before its first byte): each calls `close`, which acts once; dropping the object closes it too."""

    def __init__(self, state: ServerState, finals: list[RequestOutput | None], abort: Callable[[], None]) -> None:
        self.state, self.finals, self.abort = state, finals, abort
        self.open = True
        state.streams += 1

    def close(self) -> None:
        if self.open:
            self.open = False
            self.state.streams -= 1
            if any(f is None for f in self.finals):
                self.abort()

    def __del__(self) -> None:
        self.close()


async def _event_stream(
    streams: list[RequestStream],
    finals: list[RequestOutput | None],
    head: dict[str, Any],
    chat: bool,
    include_usage: bool,
    prompts: int,
    guard: _OpenStream,
) -> AsyncIterator[str]:
    """Server-sent events: a chunk per new piece of text per choice, the finish reason, usage if asked, [DONE]. Each
    choice's last output goes into `finals`.

    Closing the connection ends this generator (cancelled, or closed when the next chunk cannot be sent): `guard`
    then frees the rows at the engine's next step."""
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

    def chunk(index: int, text: str | None, finish_reason: str | None, role: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

    try:
        if chat:
            for index in range(len(streams)):
                yield chunk(index, None, None, role=True)
        async for index, output in _merged(streams):
            if output.error:
                error = APIError(500, f"Generation failed: {output.error}", "server_error")
                yield f"data: {json.dumps(error.body())}\n\n"
                break
            if output.finish_reason is not None:
                finals[index] = output
            if output.text or output.finish_reason is not None:
                yield chunk(index, output.text, output.finish_reason)
        else:
            if include_usage:
                usage = _usage(finals, prompts)
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        guard.close()
