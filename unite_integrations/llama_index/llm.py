"""``UniTELLM``: an ensemble of open LLMs as one LlamaIndex ``FunctionCallingLLM``.

A translator: LlamaIndex messages and keyword options become a ``ChatRequest`` for the
framework-neutral chat core (``unite_integrations.chat``), which owns option resolution, tools,
streaming tool-call parsing, usage and the sync/async bridge; its results come back as
``ChatResponse``/``CompletionResponse``s. The engine is the shared one (``engine.registry``): a
LangChain ``UniTEChatModel`` with the same members uses the same engine.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator, model_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from ..chat import (
    ChatCore,
    ChatDefaults,
    ChatRequest,
    Message,
    decode_arguments,
    default_model_name,
)
from ..chat.frontend import FIELD_DOCS, check_defaults, coerce_fields, constructed, ensemble_of
from ..engine.config import EnsembleConfig, MemberSpec
from ..engine.engine import UniTEEngine
from ..engine.registry import get_engine
from ..errors import InputError
from ._messages import (
    Responses,
    astream_responses,
    call_options,
    chat_response,
    check_messages,
    completion_response,
    stream_responses,
    to_core_messages,
    tool_spec,
)

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["UniTELLM"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _messages_checked(f: _F) -> _F:
    """Check ``messages`` before LlamaIndex's chat callback (the decorator under this one) sees
    them: its start event validates them with pydantic, so ``chat("hi")`` would raise a
    ``ValidationError`` from LlamaIndex instead of our ``InputError`` naming the fix."""
    if inspect.iscoroutinefunction(f):

        @functools.wraps(f)
        async def checked_async(self: Any, messages: Any, **kwargs: Any) -> Any:
            check_messages(messages)
            return await f(self, messages, **kwargs)

        return cast(_F, checked_async)

    @functools.wraps(f)
    def checked(self: Any, messages: Any, **kwargs: Any) -> Any:
        check_messages(messages)
        return f(self, messages, **kwargs)

    return cast(_F, checked)


#: Conversations whose rendered length is what templates add around the text; see ``metadata``.
#: Both: some templates (SmolLM2's) add a default system prompt when there is none.
_PROBES = (
    ({"role": "user", "content": "x"},),
    ({"role": "system", "content": "x"}, {"role": "user", "content": "x"}),
)


class UniTELLM(FunctionCallingLLM):
    """An ensemble of open LLMs that decodes as one model with UniTE (union top-k ensembling).

    Every member scores the union of all members' top-k next strings; their weighted average
    picks the next string. Each member renders chat messages with its own chat template.

    .. code-block:: python

        from llama_index.core import Settings
        from llama_index.core.llms import ChatMessage
        from unite_integrations.llama_index import UniTELLM

        llm = UniTELLM(members=["smollm2-135m-instruct", "gemma-3-270m"], max_new_tokens=64)
        Settings.llm = llm  # query engines, chat engines and agents use the ensemble
        llm.complete("The capital of France is", formatted=True).text  # raw continuation
        r = llm.chat([ChatMessage(role="user", content="What is the capital of France?")])
        r.raw["usage"], r.raw["provenance"]  # token counts; who proposed and won the tokens
        r = llm.chat_with_tools([add_tool], user_msg="What is 2 + 3?", tool_required=True)
        llm.get_tool_calls_from_response(r)  # [ToolSelection(tool_name='add', ...)]

    Tool calls are grammar-constrained, so forced calls always parse. Per-call keyword arguments
    override the fields: ``max_new_tokens`` (or ``max_tokens``), ``min_new_tokens``,
    ``temperature``, ``top_p``, ``seed``, ``gate``, ``stop`` (which *replaces* the field's stop strings,
    as in every front end); any other keyword is a ``ConfigError``. The behaviour is the chat
    core's, the same in every front end: see ``docs/llama_index.md``.
    """

    members: list[str | MemberSpec] = Field(description=FIELD_DOCS["members"])
    top_k: int = Field(default=10, description=FIELD_DOCS["top_k"])
    weights: list[float] | None = Field(default=None, description=FIELD_DOCS["weights"])
    prefix_cache: int | str = Field(default="auto", description=FIELD_DOCS["prefix_cache"])
    cache_dir: str | None = Field(default=None, description=FIELD_DOCS["cache_dir"])
    temperature: float = Field(default=0.0, description=FIELD_DOCS["temperature"])
    max_new_tokens: int = Field(
        default=256, description="Most union strings generated per call (LlamaIndex num_output)."
    )
    min_new_tokens: int = Field(default=0, description=FIELD_DOCS["min_tokens"])
    top_p: float = Field(default=1.0, description=FIELD_DOCS["top_p"])
    seed: int | None = Field(default=None, description=FIELD_DOCS["seed"])
    gate: float | None = Field(default=None, description=FIELD_DOCS["gate"])
    stop: list[str] = Field(default_factory=list, description=FIELD_DOCS["stop"])
    max_json_string_length: int | None = Field(
        default=512, ge=1, description=FIELD_DOCS["max_json_string_length"]
    )
    model_name: str | None = Field(
        default=None,
        description="Name reported in metadata; defaults to 'unite:' + the members' names.",
    )

    _engine: UniTEEngine | None = PrivateAttr(default=None)
    _reserve: tuple[int, int] | None = PrivateAttr(default=None)  # (id(engine), tokens)

    def __init__(self, **data: Any) -> None:
        constructed(super().__init__, "UniTELLM", data)
        check_defaults(self, self._defaults())

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, values: Any) -> Any:
        whole = ("top_k", "max_new_tokens", "min_new_tokens", "seed")
        return coerce_fields(values, whole) if isinstance(values, dict) else values

    @field_validator("stop", mode="before")
    @classmethod
    def _no_stop(cls, v: Any) -> Any:
        return [] if v is None else v  # None: no stop strings, as in every front end

    @classmethod
    def class_name(cls) -> str:
        return "UniTELLM"

    # -- the shared engine and the chat core ---------------------------------------------------

    @property
    def ensemble_config(self) -> EnsembleConfig:
        """The configuration whose one engine this LLM (and any adapter with it) uses."""
        return ensemble_of(self)

    @property
    def engine(self) -> UniTEEngine:
        """The shared engine, loaded on first use (also if the fields changed since)."""
        config = self.ensemble_config
        engine = self._engine
        if engine is None or engine.config != config:
            engine = get_engine(config)
            self._engine = engine
        return engine

    @property
    def core(self) -> ChatCore:
        """The chat core with these fields as its defaults (the engine loads on first call)."""
        return ChatCore(lambda: self.engine, defaults=self._defaults(), model_name=self._name())

    def _defaults(self) -> ChatDefaults:
        return ChatDefaults.from_fields(
            self, max_tokens="max_new_tokens", min_tokens="min_new_tokens"
        )

    def _name(self) -> str:
        return self.model_name or default_model_name(self.members)

    @property
    def metadata(self) -> LLMMetadata:
        """``context_window``: the smallest member window less the most tokens any member's
        chat template adds around a user turn, with or without a system turn (LlamaIndex
        subtracts ``num_output`` itself). Reading it loads the engine."""
        engine = self.engine
        if self._reserve is None or self._reserve[0] != id(engine):
            spent = max(len(m.encode_prompt(p)) for m in engine.members for p in _PROBES)
            self._reserve = (id(engine), spent)
        return LLMMetadata(
            context_window=engine.context_window - self._reserve[1],
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self._name(),
            system_role=MessageRole.SYSTEM,
        )

    def to_payload(self) -> dict[str, Any]:
        """What events record: the metadata once loaded; before, what needs no loading."""
        payload: dict[str, Any] = {
            "class_name": self.class_name(),
            "model_name": self._name(),
            "num_output": self.max_new_tokens,
            "is_chat_model": True,
            "is_function_calling_model": True,
            "top_k": self.top_k,
            "temperature": self.temperature,
        }
        if self._engine is not None:
            payload.update(self.metadata.model_dump())
        return payload

    @property
    def tokenizer(self) -> Callable[[str], list[int]]:
        """A token counter for ``Settings.tokenizer``: the most tokens any member needs for a
        text, so LlamaIndex's prompt budgets hold for every member."""

        def count(text: str) -> list[int]:
            ids = [
                m.tokenizer(text, add_special_tokens=False)["input_ids"]
                for m in self.engine.members
            ]
            return max((list(i) for i in ids), key=len)

        return count

    # -- requests -------------------------------------------------------------------------------

    def _completion_request(self, prompt: str, formatted: bool, kw: dict[str, Any]) -> ChatRequest:
        if not isinstance(prompt, str):
            raise InputError(f"the prompt is a {type(prompt).__name__}; pass a string")
        if formatted:  # an empty raw text has nothing to continue: the engine refuses it  # already formatted: the members continue the raw text
            return ChatRequest(text=prompt, options=call_options(kw))
        turns = [Message("system", self.system_prompt)] if self.system_prompt else []
        return ChatRequest(messages=(*turns, Message("user", prompt)), options=call_options(kw))

    def _chat_request(self, messages: Sequence[ChatMessage], kw: dict[str, Any]) -> ChatRequest:
        """A chat call as the core's request: tools, tool choice, parallel calls and a
        ``response_format`` (OpenAI's dicts or a JSON schema) besides the options."""
        kw = dict(kw)
        parallel = kw.pop("parallel_tool_calls", None)
        return ChatRequest(
            messages=to_core_messages(messages),
            tools=tuple(tool_spec(t) for t in kw.pop("tools", None) or ()),
            tool_choice=kw.pop("tool_choice", None),
            parallel_tool_calls=None if parallel is None else bool(parallel),
            response_format=kw.pop("response_format", None),
            options=call_options(kw),
        )

    # -- completion -----------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete ``prompt``: with ``formatted=True`` the members continue the raw text (each
        with its tokenizer's BOS); otherwise it is one user turn (after ``system_prompt``)
        rendered with each member's chat template, as LlamaIndex specifies for chat models."""
        result = self.core.invoke(self._completion_request(prompt, formatted, kwargs))
        return completion_response(result)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Stream a completion; closing or dropping the stream stops the decoding."""
        chunks = self.core.stream(self._completion_request(prompt, formatted, kwargs))
        return stream_responses(chunks, Responses(completion=True))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        request = self._completion_request(prompt, formatted, kwargs)
        return completion_response(await self.core.ainvoke(request))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        request = self._completion_request(prompt, formatted, kwargs)
        return astream_responses(await self.core.astream(request), Responses(completion=True))

    # -- chat -----------------------------------------------------------------------------------

    @_messages_checked
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Chat: each member renders ``messages`` with its own chat template. With ``tools``
        (LlamaIndex tools or OpenAI-style dicts), generated tool calls are ``ToolCallBlock``s;
        ``tool_choice`` is ``"auto"`` (default), ``"required"``, ``"none"`` or a tool name."""
        return chat_response(self.core.invoke(self._chat_request(messages, kwargs)))

    @_messages_checked
    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream chat; each tool call appears (whole) in the chunk where its block closes, and
        the last chunk has every call. Closing or dropping the stream stops the decoding."""
        return stream_responses(self.core.stream(self._chat_request(messages, kwargs)), Responses())

    @_messages_checked
    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return chat_response(await self.core.ainvoke(self._chat_request(messages, kwargs)))

    @_messages_checked
    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        request = self._chat_request(messages, kwargs)
        return astream_responses(await self.core.astream(request), Responses())

    # -- tool calling ---------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Arguments of ``chat`` for ``chat_with_tools`` and friends. ``tool_choice`` (a tool
        name, ``"auto"``, ``"required"``, ``"none"``) wins over ``tool_required``."""
        messages = list(chat_history or [])  # never mutate the caller's history
        if isinstance(user_msg, str):
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
        elif user_msg is not None:
            messages.append(user_msg)
        if tool_choice is None:
            tool_choice = "required" if tool_required else "auto"
        return {
            "messages": messages,
            "tools": list(tools) or None,
            "tool_choice": tool_choice,
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Without parallel calls, keep only the first call (the grammar allows one anyway)."""
        if not allow_parallel_tool_calls:
            calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
            for extra in calls[1:]:
                response.message.blocks.remove(extra)
            listed = response.message.additional_kwargs.get("tool_calls")
            if len(calls) > 1 and isinstance(listed, list):
                del listed[1:]
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The response's ``ToolCallBlock``s as ``ToolSelection``s."""
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            raise ValueError(
                "expected at least one tool call, but the ensemble answered with text: "
                f"{response.message.content!r} (force one: tool_required=True or a tool_choice)"
            )
        return [
            ToolSelection(
                tool_id=c.tool_call_id or "",
                tool_name=c.tool_name,
                tool_kwargs=decode_arguments(c.tool_kwargs, f"tool call {c.tool_name!r}"),
            )
            for c in calls
        ]
