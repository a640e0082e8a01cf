"""OpenAI request bodies as typed models: what ``/v1/chat/completions`` and ``/v1/completions`` accept.

Only the shape is checked here (types, ranges, required fields); what the ensemble can do with a
valid body (a tool choice naming a bound tool, a schema the grammar accepts) is the chat core's
business. Unknown fields are ignored, as vLLM does, so clients that send more than we read still
work; fields we read but cannot honour (``n`` other than 1, top log-probabilities) are refused by
the app with a message that says so.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "StreamOptions",
    "UniteOptions",
]

#: OpenAI allows up to four stop sequences; more are refused rather than silently cut.
MAX_STOP = 4


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class UniteOptions(_Body):
    """The extension object ``"unite": {...}`` (clients pass it as ``extra_body``)."""

    token_provenance: bool = Field(
        default=False,
        description="Also return, per generated token, which members proposed it, each member's "
        "probability and the winner.",
    )


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _Sampling(_Body):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    min_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Tokens to generate before the answer may end (vLLM's extension).",
    )
    unite: UniteOptions = Field(default_factory=UniteOptions)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def token_budget(self) -> int | None:
        """``max_completion_tokens`` (newer clients) or ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def token_budget(self) -> int | None:
        return self.max_tokens
