"""OpenAI request bodies as typed models: what ``/v1/chat/completions`` and ``/v1/completions`` accept.

Only the shape is checked here (types and required fields): values (ranges of options, roles,
tools, tool choices, schemas, empty conversations) are the chat core's to check, once for every
front end, and its typed errors become 400s. Types are strict, as OpenAI's API is: an integer
field takes a JSON integer only (not ``"12"``, ``12.5``, ``12.0`` or ``true``), a number field
a JSON number (an integer will do, a string or a boolean not), a boolean field ``true`` or
``false``; anything else is a 400 naming the field. Unknown fields are ignored, as vLLM does, so
clients that send more than we read still work; fields we read but cannot honour (penalties,
``best_of`` other than ``n``) are refused by the app with a message that says so.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..chat.options import MAX_CHOICES
from ..engine.generation_options import stop_strings

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
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False


class UniteOptions(_Body):
    """The extension object ``"unite": {...}`` (clients pass it as ``extra_body``)."""

    token_provenance: bool = Field(
        default=False,
        description="Also return, per generated token, which members proposed it, each member's "
        "probability and the winner.",
    )
    gate: float | None = Field(
        default=None,
        description="Gated ensembling: the primary member's token is taken alone where its "
        "top-1 probability is >= gate (0..1; 1 or absent: full UniTE).",
    )


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _Sampling(_Body):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(
        default=None,
        description=f"Choices to return (1..{MAX_CHOICES}; the chat core checks the value): rows "
        "of one batch, choice i > 0 seeded from (seed, i).",
    )
    min_tokens: int | None = Field(
        default=None,
        description="Tokens to generate before the answer may end (vLLM's extension).",
    )
    unite: UniteOptions = Field(default_factory=UniteOptions)
    # OpenAI options the ensemble cannot honour: refused when set to anything but "off".
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def stops(self) -> list[str]:
        return list(stop_strings(self.stop))  # the one rule: a bare string is one stop string


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def token_budget(self) -> int | None:
        """``max_completion_tokens`` (newer clients) or ``max_tokens``."""
        return self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens


class CompletionRequest(_Sampling):
    # Token ids (one list of integers, or a list of them) are read so that the app can refuse
    # them by name: the members' vocabularies differ, so no id names a piece of text.
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    def prompts(self) -> list[str]:
        """The prompt texts (the app refuses token ids first: see ``token_ids``)."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        return [p for p in self.prompt if isinstance(p, str)]

    def token_ids(self) -> bool:
        """Whether the prompt is token ids, as lm-evaluation-harness sends with a tokenizer."""
        return not isinstance(self.prompt, str) and any(not isinstance(p, str) for p in self.prompt)

    def token_budget(self) -> int | None:
        return self.max_tokens
