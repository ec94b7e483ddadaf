"""The OpenAI request bodies the server accepts, and its error shape.

What is supported, and what is refused with a 400 rather than ignored: ``n`` must be 1;
``logprobs``, ``echo``, ``best_of`` > 1, ``suffix``, tools and function calls are not supported.
``temperature`` defaults to 1 as in OpenAI's API (0: greedy); ``top_p``, ``seed``, ``stop`` (up
to 4 strings), ``max_tokens`` (chat: also ``max_completion_tokens``), ``stream`` and
``stream_options.include_usage`` work as there; ``ignore_eos`` (vLLM's extension) keeps
generating past the end-of-sequence token; ``top_k`` (vLLM's too) samples from the k likeliest.
Unknown fields are ignored, as OpenAI's server does.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4
MAX_STOP_CHARS = 1000


class ApiError(Exception):
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES = {400: "invalid_request_error", 404: "invalid_request_error",
             413: "invalid_request_error", 499: "request_cancelled", 503: "server_overloaded",
             500: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, retry_after_s: int | None = None,
                 counted: bool = False):
        super().__init__(message)
        self.counted = counted  # already counted as a failure (by the engine's end)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after_s = retry_after_s

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status,
                                                                           "server_error"),
                          "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    ignore_eos: bool = False
    logprobs: Any = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence is 1 to {MAX_STOP_CHARS} characters")
        return tuple(stops)

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v):
        if v not in (None, False, 0):
            raise ValueError("logprobs are not supported by infer-os serve")
        return None


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1, le=1)
    suffix: str | None = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v):
        if v:
            raise ValueError("echo is not supported by infer-os serve")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v):
        if v:
            raise ValueError("suffix is not supported by infer-os serve")
        return v


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[TextPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: Any = None
    functions: Any = None

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, v):
        if v:
            raise ValueError("tools and function calls are not supported by infer-os serve")
        return None


def single_prompt(req: CompletionRequest) -> str | list[int]:
    """The one prompt of a completion request (text or token ids); a batch of prompts is a
    400, as ``n`` > 1 is."""
    p = req.prompt
    if isinstance(p, str):
        return p
    if p and all(isinstance(x, int) for x in p):
        return list(p)
    if len(p) == 1:
        return p[0]
    raise ApiError(400, "one prompt per request (send a batch as separate requests)", "prompt")
