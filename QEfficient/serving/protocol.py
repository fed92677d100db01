"""The OpenAI API's request bodies as the server reads them, and its error shape.

Requests are checked before they reach the engine: a parameter QEfficient does not implement is a 400 that names it
(never silently ignored), as is any value out of range. Errors use OpenAI's JSON shape,
`{"error": {"message", "type", "param", "code"}}`, so that OpenAI clients raise their usual exceptions.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Fields OpenAI clients may send that change nothing here (accepted and ignored).
IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key"})


class APIError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    """Unknown fields are kept (`model_extra`) so that `unsupported()` can name them."""

    model_config = ConfigDict(extra="allow")

    def unsupported(self) -> list[str]:
        """Parameters set to something this server does not do."""
        extra = [name for name in (self.model_extra or {}) if name not in IGNORED_FIELDS]
        return extra + [name for name, bad in self._unsupported_values().items() if bad]

    def _unsupported_values(self) -> dict[str, bool]:
        return {}


class _Sampling(_Request):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)  # vLLM's extra; 0 and -1 disable it
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, le=16)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    ignore_eos: bool = False  # vLLM's extra
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    guided_regex: str | None = None  # vLLM's extra

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def _unsupported_values(self) -> dict[str, bool]:
        return {"logprobs": bool(self.logprobs), "logit_bias": bool(self.logit_bias)}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text: a string, or its text parts joined (other parts are refused)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        pieces = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(
                    400,
                    f"Message content part of type {part.get('type')!r} is not supported: this model reads text "
                    "only; send text parts ({'type': 'text', 'text': ...}) or a string.",
                    param="messages",
                )
            pieces.append(part["text"])
        return "".join(pieces)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None

    def _unsupported_values(self) -> dict[str, bool]:
        return {
            **super()._unsupported_values(),
            "top_logprobs": bool(self.top_logprobs),
            "tools": bool(self.tools),
            "tool_choice": self.tool_choice not in (None, "none"),
            "functions": bool(self.functions),
            "function_call": self.function_call not in (None, "none"),
        }

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def _unsupported_values(self) -> dict[str, bool]:
        return {
            **super()._unsupported_values(),
            "echo": self.echo,
            "suffix": bool(self.suffix),
            "best_of": self.best_of not in (None, 1, self.n),
        }

    def token_limit(self) -> int | None:
        return 16 if self.max_tokens is None else self.max_tokens  # OpenAI's default for completions

    def prompts(self) -> list[str | list[int]]:
        """The prompt(s): a string, a token-id list, or a list of either."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
