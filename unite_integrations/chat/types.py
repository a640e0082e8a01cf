"""The chat core's neutral types: what a front end hands the core and what it gets back.

Every front end (LangChain, LlamaIndex, the OpenAI-compatible server) translates its own message
and response classes to and from these, so the behaviour behind them is written once. They are
frozen dataclasses with no framework import; the names follow OpenAI's chat API where it has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

# The one tool-call type is the format's (engine/tool_format.py); the chat core names it too.
from ..engine.tool_format import ToolCall

if TYPE_CHECKING:
    from ..engine.results import TokenProvenance

__all__ = [
    "ROLES",
    "ChatChunk",
    "ChatOptions",
    "ChatRequest",
    "ChatResult",
    "ChatUsage",
    "FinishReason",
    "Message",
    "ResponseFormat",
    "Role",
    "ToolCall",
    "ToolCallChunk",
]

Role = Literal["system", "user", "assistant", "tool"]
#: Finish reasons, as OpenAI names them: ``tool_calls`` when the answer is one or more calls.
FinishReason = Literal["stop", "length", "tool_calls"]

#: The one role table: every front end's spelling of a role -> the engine's four roles.
#: developer (OpenAI) is a system turn; human (LangChain), ai, chatbot (Cohere) and model (Gemini)
#: are user/assistant turns; function (OpenAI's legacy function result) is a tool turn.
ROLES: Mapping[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "chatbot": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
}


@dataclass(frozen=True)
class ToolCallChunk:
    """A tool call as a stream delivers it: ``index`` numbers the calls of one answer (0, 1, ...)
    and ``arguments`` is their JSON text. The core's stream emits each call whole, once its block
    closes, so every chunk carries id, name and the complete arguments."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One conversation turn in neutral form (use ``chat.messages.message`` to build one from
    loosely typed input with the role table and a typed error)."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    """Calls an assistant turn made (rendered into each member's chat template)."""
    tool_call_id: str | None = None
    """For a tool turn: the id of the call it answers."""
    name: str | None = None
    """For a tool turn: the tool's name (some templates show it)."""


@dataclass(frozen=True)
class ResponseFormat:
    """Structured output: ``json_object`` (any JSON object) or ``json_schema`` (an instance of
    ``schema``). Decoding is constrained, so the answer always parses."""

    type: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ChatOptions:
    """Per-call generation options; ``None`` means "the front end's default" (``ChatDefaults``).

    ``stop``: a bare string is one stop string. A call's ``stop`` *replaces* the default stop
    strings (as in OpenAI's and LangChain's hosted models); pass the defaults again to keep them.
    """

    max_tokens: int | None = None
    min_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | tuple[str, ...] | list[str] | None = None
    gate: float | None = None
    """Gated ensembling threshold (see ``GenerationOptions.gate``); 1.0 asks for full UniTE
    where the front end's default gates."""
    token_provenance: bool | None = None
    """Keep each generated token's provenance in ``ChatResult.tokens`` (its text and bytes, its
    log-probability, who proposed it, each member's probability)."""
    top_logprobs: int | None = None
    """0..20: also keep, per token, that many most likely strings of the mixed distribution it
    was chosen from (``TokenProvenance.top``); more than 0 implies ``token_provenance``."""
    n: int | None = None
    """Choices to generate for the prompt (1..``MAX_CHOICES``), decoded together as rows of one
    batch; OpenAI's ``n``. Each choice samples from a random stream of its own: with a ``seed``,
    choice 0 uses the seed itself (so it equals the answer with ``n=1``) and choice i > 0 a seed
    derived from (seed, i) (``chat.options.choice_seed``); without one, independent draws.
    Greedy choices are equal. ``ChatCore.choices``/``achoices`` return them; a stream tags each
    chunk with its ``ChatChunk.choice``; ``invoke``/``ainvoke`` give one answer and refuse n > 1."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat call: the conversation (or, for raw completion, ``text``), options, tools.

    ``tools`` are OpenAI-style function tools (``{"type": "function", "function": {...}}``).
    ``tool_choice``: ``"auto"`` (default: text or calls, the ensemble decides), ``"none"`` (text;
    the tools are not shown), ``"required"`` (at least one call) or a tool's name (that tool);
    every front end's spelling is read (``True``, ``"any"``, ``{"type": "function", "function":
    {"name": ...}}``; see ``engine.tool_format.tool_choice``). ``parallel_tool_calls``: ``None``
    is the front end's default (off: small members repeat a call until the budget ends).
    """

    messages: tuple[Message, ...] = ()
    options: ChatOptions = ChatOptions()
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: str | bool | Mapping[str, Any] | None = "auto"
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | Mapping[str, Any] | None = None
    """A ``ResponseFormat``, or OpenAI's dicts (``{"type": "json_object"}``, ``{"type":
    "json_schema", "json_schema": {"schema": ...}}``) or a bare JSON schema."""
    text: str | None = None
    """A raw prompt the members continue as is (no chat template); replaces ``messages``."""


@dataclass(frozen=True)
class ChatUsage:
    """Token counts: ``input_tokens`` is the primary member's count of the prompt,
    ``output_tokens`` the union strings chosen; per member, what each tokenizer counts."""

    input_tokens: int
    output_tokens: int
    input_tokens_per_member: Mapping[str, int] = field(default_factory=dict)
    output_tokens_per_member: Mapping[str, int] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class ChatResult:
    """A complete answer: content and tool calls (parsed when tools were offered), why it
    stopped, usage, the ensemble's provenance summary and the model name."""

    content: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    usage: ChatUsage
    provenance: Mapping[str, Any]
    model: str
    text: str = ""
    """The raw generated text (content and call blocks as the members wrote them)."""
    tokens: tuple[TokenProvenance, ...] = ()
    """Per generated token, its provenance: only when the call asked (``ChatOptions``'
    ``token_provenance`` or ``top_logprobs``)."""

    def metadata(self) -> dict[str, Any]:
        """What every front end reports as response metadata (one shape everywhere); the
        provenance has ``tokens`` (as dicts) when the call kept them."""
        provenance = dict(self.provenance)
        if self.tokens:
            provenance["tokens"] = [t.model_dump() for t in self.tokens]
        return {
            "model_name": self.model,
            "model_provider": "unite",
            "finish_reason": self.finish_reason,
            "provenance": provenance,
            "member_usage": {
                "input_tokens": dict(self.usage.input_tokens_per_member),
                "output_tokens": dict(self.usage.output_tokens_per_member),
            },
        }


@dataclass(frozen=True)
class ChatChunk:
    """A piece of a streamed answer: new content, tool calls completed since the last chunk.
    The last chunk has ``finish_reason`` and the complete ``result`` (usage, provenance).

    With ``n`` > 1 choices, one stream carries them all, interleaved as they decode: ``choice``
    says whose chunk it is (0..n-1), and each choice has a last chunk of its own."""

    content: str = ""
    tool_calls: tuple[ToolCallChunk, ...] = ()
    finish_reason: FinishReason | None = None
    result: ChatResult | None = None
    choice: int = 0
