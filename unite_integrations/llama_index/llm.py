"""``UniTELLM``: an ensemble of open LLMs as one LlamaIndex ``FunctionCallingLLM``.

A thin adapter: LlamaIndex messages in, the shared ``UniTEEngine`` (see ``engine.registry``),
``ChatResponse``/``CompletionResponse`` out. The engine is fetched on first use and held in a
private attribute; a LangChain ``UniTEChatModel`` with the same members uses the same engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from ..engine.config import EnsembleConfig, GenerationOptions, MemberSpec, ensemble_config
from ..engine.constraints import Constraint
from ..engine.engine import Prompt, UniTEEngine
from ..engine.registry import get_engine
from ..engine.results import GenerationResult
from ..errors import ConfigError, InputError
from ._messages import (
    ToolCallStream,
    assistant_message,
    chat_response,
    completion_response,
    raw_of,
    to_engine_messages,
)
from ._threads import primed, thread_stream

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["UniTELLM"]

#: Per-call options (keyword arguments of every call) and what they override.
CALL_OPTIONS = ("max_new_tokens", "min_new_tokens", "temperature", "top_p", "seed", "stop")
#: Conversations whose rendered length is what templates add around the text; see ``metadata``.
#: Both: some templates (SmolLM2's) add a default system prompt when there is none.
_PROBES = (
    ({"role": "user", "content": "x"},),
    ({"role": "system", "content": "x"}, {"role": "user", "content": "x"}),
)


@dataclass
class _Call:
    """One call, resolved: the engine prompt, tools and grammar, options."""

    prompt: Prompt
    options: dict[str, Any]
    tools: list[dict[str, Any]] | None = None
    constraint: Constraint | None = None

    @property
    def with_tools(self) -> bool:
        return self.constraint is not None


class UniTELLM(FunctionCallingLLM):
    """An ensemble of open LLMs that decodes as one model with UniTE (union top-k ensembling).

    Every member scores the union of all members' top-k next strings; the weighted average of
    their probabilities picks the next string, which is fed back to every member. Chat messages
    are rendered with each member's own chat template.

    Setup:
        .. code-block:: python

            from llama_index.core import Settings
            from unite_integrations.llama_index import UniTELLM

            llm = UniTELLM(members=["smollm2-135m-instruct", "gemma-3-270m"], max_new_tokens=64)
            Settings.llm = llm  # query engines, chat engines and agents use the ensemble

    Complete and chat:
        .. code-block:: python

            from llama_index.core.llms import ChatMessage

            llm.complete("The capital of France is", formatted=True).text  # raw continuation
            llm.complete("Name a primary colour.").text  # a user turn, chat templates applied
            r = llm.chat([ChatMessage(role="user", content="What is the capital of France?")])
            r.message.content
            r.raw["usage"], r.raw["provenance"]  # token counts; who proposed and won the tokens

    Stream (``text`` is cumulative, ``delta`` is new):
        .. code-block:: python

            for chunk in llm.stream_chat([ChatMessage(role="user", content="Tell me a joke")]):
                print(chunk.delta, end="")

    Tool calling (grammar-constrained, so forced calls always parse):
        .. code-block:: python

            from llama_index.core.tools import FunctionTool

            def add(a: int, b: int) -> int:
                \"\"\"Add two integers.\"\"\"
                return a + b

            tool = FunctionTool.from_defaults(add)
            r = llm.chat_with_tools([tool], user_msg="What is 2 + 3?", tool_required=True)
            llm.get_tool_calls_from_response(r)  # [ToolSelection(tool_name='add', ...)]

    Structured output:
        .. code-block:: python

            from pydantic import BaseModel

            class City(BaseModel):
                name: str
                country: str

            llm.as_structured_llm(City).complete("Paris").raw  # a City instance

    Per-call keyword arguments override the fields: ``max_new_tokens`` (``max_tokens`` is
    accepted as a synonym), ``min_new_tokens``, ``temperature``, ``top_p``, ``seed``; ``stop``
    adds to the field's stop strings. Any other keyword is a ``ConfigError``.
    """

    members: list[str | MemberSpec] = Field(
        description=(
            "Ensemble members: built-in aliases ('smollm2-135m-instruct', 'gemma-3-270m'), local "
            "transformers directories, .gguf files, hub ids, or MemberSpec objects (device, "
            "dtype, chat_template, context_window, weight). The first member is the primary."
        ),
    )
    top_k: int = Field(default=10, description="Candidates each member proposes per step.")
    weights: list[float] | None = Field(
        default=None,
        description="One relative weight per member (normalised); None keeps each spec's weight.",
    )
    temperature: float = Field(
        default=0.0, description="0 decodes greedily; above 0 samples (members' scores / T)."
    )
    max_new_tokens: int = Field(
        default=256, description="Most union strings generated per call (LlamaIndex num_output)."
    )
    top_p: float = Field(default=1.0, description="Nucleus mass over the union when sampling.")
    seed: int | None = Field(
        default=None, description="Seed for sampling: the same seed gives the same text."
    )
    stop: list[str] = Field(
        default_factory=list,
        description="Strings that end generation; they are never part of the returned text.",
    )
    model_name: str | None = Field(
        default=None,
        description="Name reported in metadata; defaults to 'unite:' + the members' names.",
    )

    _engine: UniTEEngine | None = PrivateAttr(default=None)
    _reserve: tuple[int, int] | None = PrivateAttr(default=None)  # (id(engine), tokens)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Bad values fail here, as the package's ConfigError, before any model is loaded.
        _ = self.ensemble_config
        GenerationOptions(**self._options({}))

    @field_validator("members", mode="before")
    @classmethod
    def _coerce_members(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, MemberSpec)) else v

    @field_validator("stop", mode="before")
    @classmethod
    def _coerce_stop(cls, v: Any) -> Any:
        if v is None:
            return []
        return [v] if isinstance(v, str) else v

    @classmethod
    def class_name(cls) -> str:
        return "UniTELLM"

    # -- the shared engine --------------------------------------------------------------------------

    @property
    def ensemble_config(self) -> EnsembleConfig:
        """The configuration whose one engine this LLM (and any adapter with it) uses."""
        return ensemble_config(self.members, top_k=self.top_k, weights=self.weights)

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
    def metadata(self) -> LLMMetadata:
        """``context_window``: the smallest member window less the most tokens any member's
        chat template adds around a user turn, with or without a system turn (LlamaIndex
        subtracts ``num_output`` itself). Reading it loads the engine."""
        engine = self.engine
        reserve = self._reserve
        if reserve is None or reserve[0] != id(engine):
            spent = max(len(m.encode_prompt(p)) for m in engine.members for p in _PROBES)
            reserve = (id(engine), spent)
            self._reserve = reserve
        return LLMMetadata(
            context_window=engine.context_window - reserve[1],
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self._model_name(),
            system_role=MessageRole.SYSTEM,
        )

    def _model_name(self) -> str:
        names = (m.display_name for m in self.ensemble_config.members)
        return self.model_name or "unite:" + "+".join(names)

    def to_payload(self) -> dict[str, Any]:
        """What callbacks and instrumentation events record for every call: the metadata once
        the engine is loaded; before that, what needs no loading (LlamaIndex calls this inside
        the event loop, where loading the members would block it)."""
        payload: dict[str, Any] = {
            "class_name": self.class_name(),
            "model_name": self._model_name(),
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
    def tokenizer(self) -> _MemberTokenizer:
        """A token counter for ``Settings.tokenizer``: the most tokens any member needs for a
        text, so LlamaIndex's prompt budgets hold for every member."""
        return _MemberTokenizer(self)

    # -- calls: resolving options, prompts and tools -------------------------------------------------

    def _options(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": list(self.stop),
        }
        for key, value in kwargs.items():
            name = "max_new_tokens" if key == "max_tokens" else key
            if name not in CALL_OPTIONS:
                raise ConfigError(
                    f"UniTELLM got an unknown keyword argument {key!r}; per-call options are "
                    f"{', '.join(CALL_OPTIONS)} (max_tokens is read as max_new_tokens)"
                )
            if name == "stop":
                extra = [value] if isinstance(value, str) else list(value or [])
                options["stop"] = [*options["stop"], *extra]
            else:
                options[name] = value
        return options

    def _completion_call(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> _Call:
        if not isinstance(prompt, str) or not prompt:
            raise InputError("the prompt is empty: pass some text")
        if formatted:  # already formatted: the members continue the raw text
            return _Call(prompt, self._options(kwargs))
        turns = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return _Call([*turns, {"role": "user", "content": prompt}], self._options(kwargs))

    def _chat_call(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> _Call:
        kwargs = dict(kwargs)
        tools = kwargs.pop("tools", None)
        choice = kwargs.pop("tool_choice", None)
        parallel = bool(kwargs.pop("parallel_tool_calls", True))
        prompt = to_engine_messages(messages)
        specs = [_tool_spec(t) for t in tools or []]
        name = _choice_name(choice)
        if not specs:
            if name not in ("auto", "none"):
                raise ConfigError(f"tool_choice {choice!r} needs tools: pass tools=[...]")
            return _Call(prompt, self._options(kwargs))
        if name == "none":  # tools may have been called before, but not now
            return _Call(prompt, self._options(kwargs))
        constraint = Constraint.tool_calls(specs, name, parallel=parallel)
        return _Call(prompt, self._options(kwargs), specs, constraint)

    def _generate(self, call: _Call) -> GenerationResult:
        return self.engine.generate(
            [call.prompt], tools=call.tools, constraint=call.constraint, **call.options
        )[0]

    # -- completion ---------------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete ``prompt``: with ``formatted=True`` the members continue the raw text (each
        with its tokenizer's BOS); otherwise it is one user turn (after ``system_prompt``)
        rendered with each member's chat template, as LlamaIndex specifies for chat models."""
        return completion_response(self._generate(self._completion_call(prompt, formatted, kwargs)))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        call = self._completion_call(prompt, formatted, kwargs)
        return primed(self._completion_stream(call))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        call = self._completion_call(prompt, formatted, kwargs)
        return completion_response(await asyncio.to_thread(self._generate, call))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        call = self._completion_call(prompt, formatted, kwargs)
        return await thread_stream(lambda: self._completion_stream(call))

    def _completion_stream(self, call: _Call) -> Iterator[CompletionResponse]:
        text = ""
        for chunk in self.engine.stream(call.prompt, **call.options):
            text += chunk.text
            if chunk.result is None:
                yield CompletionResponse(text=text, delta=chunk.text)
            else:
                yield completion_response(chunk.result, text=text, delta=chunk.text)

    # -- chat ---------------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Chat: each member renders ``messages`` with its own chat template. With ``tools``
        (LlamaIndex tools or OpenAI-style dicts), generated tool calls are ``ToolCallBlock``s;
        ``tool_choice`` is ``"auto"`` (default), ``"required"``, ``"none"`` or a tool name."""
        call = self._chat_call(messages, kwargs)
        return chat_response(self._generate(call), call.with_tools)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream chat; with tools, calls appear (complete) in the last chunk."""
        call = self._chat_call(messages, kwargs)
        return primed(self._chat_stream(call))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        call = self._chat_call(messages, kwargs)
        return chat_response(await asyncio.to_thread(self._generate, call), call.with_tools)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        call = self._chat_call(messages, kwargs)
        return await thread_stream(lambda: self._chat_stream(call))

    def _chat_stream(self, call: _Call) -> Iterator[ChatResponse]:
        text = ""
        tools = ToolCallStream() if call.with_tools else None
        stream = self.engine.stream(
            call.prompt, tools=call.tools, constraint=call.constraint, **call.options
        )
        for chunk in stream:
            text += chunk.text
            if chunk.result is not None:
                content, calls, delta = tools.finish(text) if tools else (text, [], chunk.text)
                yield ChatResponse(
                    message=assistant_message(content, calls),
                    delta=delta,
                    raw=raw_of(chunk.result),
                    additional_kwargs={
                        "prompt_tokens": chunk.result.usage.input_tokens,
                        "completion_tokens": chunk.result.usage.output_tokens,
                        "total_tokens": chunk.result.usage.total_tokens,
                    },
                )
                return
            delta = tools.update(text) if tools else chunk.text
            shown = tools.shown if tools else text
            yield ChatResponse(message=assistant_message(shown), delta=delta)

    # -- tool calling -------------------------------------------------------------------------------

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
        name, ``"auto"``, ``"required"``, ``"none"``) wins over ``tool_required``; calls are
        always grammar-constrained, so a required or named call always parses."""
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
            if len(calls) > 1:
                listed = response.message.additional_kwargs.get("tool_calls")
                if isinstance(listed, list):
                    del listed[1:]
        return response

    def get_tool_calls_from_response(
        self,
        response: ChatResponse,
        error_on_no_tool_call: bool = True,
        **kwargs: Any,
    ) -> list[ToolSelection]:
        """The response's ``ToolCallBlock``s as ``ToolSelection``s."""
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls:
            if error_on_no_tool_call:
                raise ValueError(
                    "expected at least one tool call, but the ensemble answered with text: "
                    f"{response.message.content!r} (pass tool_required=True or a tool_choice "
                    "to force a call)"
                )
            return []
        return [
            ToolSelection(
                tool_id=c.tool_call_id or "",
                tool_name=c.tool_name,
                tool_kwargs=_arguments(c.tool_kwargs),
            )
            for c in calls
        ]


class _MemberTokenizer:
    """``Settings.tokenizer``-compatible: token ids of the member that needs the most."""

    def __init__(self, llm: UniTELLM) -> None:
        self._llm = llm

    def __call__(self, text: str) -> list[int]:
        tokenized = [
            list(m.tokenizer(text, add_special_tokens=False)["input_ids"])
            for m in self._llm.engine.members
        ]
        return max(tokenized, key=len)


def _tool_spec(tool: Any) -> dict[str, Any]:
    """An OpenAI-style tool dict from a LlamaIndex tool (or such a dict, passed through)."""
    metadata = getattr(tool, "metadata", None)
    if metadata is not None and hasattr(metadata, "to_openai_tool"):
        spec: dict[str, Any] = metadata.to_openai_tool(skip_length_check=True)
        return spec
    if isinstance(tool, Mapping):
        return dict(tool)
    raise ConfigError(
        f"a tool is a {type(tool).__name__}; pass LlamaIndex tools (FunctionTool, ...) or "
        "OpenAI-style dicts {'type': 'function', 'function': {...}}"
    )


def _choice_name(choice: Any) -> str:
    """'auto', 'required', 'none' or a tool name, from LlamaIndex's and OpenAI's spellings."""
    if choice is None:
        return "auto"
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else choice.get("name")
        if isinstance(name, str) and name:
            return name
        raise ConfigError(f"tool_choice {dict(choice)!r} names no tool")
    if choice == "any":
        return "required"
    if isinstance(choice, str) and choice:
        return choice
    raise ConfigError(f"tool_choice must be a string or a dict, got {choice!r}")


def _arguments(value: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if value else {}
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
