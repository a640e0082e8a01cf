"""``UniTEChatModel``: an ensemble of open LLMs as one LangChain chat model.

A translator: LangChain messages and call options become a ``ChatRequest`` for the framework-
neutral chat core (``unite_integrations.chat``), which owns option resolution, tools and
structured output, streaming tool-call parsing, usage and the sync/async bridge; its results
come back as ``AIMessage``s (or ``AIMessageChunk``s). Batching is the engine's scheduler's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput, ModelProfile
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
)
from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..chat import (
    ChatCore,
    ChatDefaults,
    ChatRequest,
    default_model_name,
    stop_strings,
    tool_choice,
    tool_names,
)
from ..chat.frontend import FIELD_DOCS, check_defaults, coerce_fields, constructed, ensemble_of
from ..chat.options import n_choices
from ..engine.config import EnsembleConfig, MemberSpec
from ..engine.engine import UniTEEngine
from ..engine.registry import get_engine
from ..errors import ConfigError, UniteError
from ._messages import (
    CALL_OPTIONS,
    ai_message,
    generation_chunk,
    input_error,
    openai_tool,
    to_core_request,
)
from ._profile import model_profile
from ._structured import structured_output

__all__ = ["UniTEChatModel"]

#: What ``_identifying_params`` reports besides the members: the ensemble's shape and the
#: call options the fields default.
_OPTION_FIELDS = ("top_k", "weights", *CALL_OPTIONS)

_PROVIDER = "unite"


class UniTEChatModel(BaseChatModel):
    """An ensemble of open LLMs (UniTE, union top-k) used as one LangChain chat model.

    Every step, each member proposes its top-k next tokens; every member scores the union of
    those strings; the scores are averaged and one string is chosen and fed back to every member.
    Members may have different tokenizers; each renders the conversation with its own template.

    Setup (``pip install "unite-integrations[langchain]"``):
        ```python
        from unite_integrations.langchain import UniTEChatModel

        llm = UniTEChatModel(members=["smollm2-135m-instruct", "gemma-3-270m"], max_tokens=64)
        msg = llm.invoke([("system", "Be brief."), ("human", "What is the capital of France?")])
        msg.content  # 'The capital of France is Paris.\n'
        msg.usage_metadata, msg.response_metadata["provenance"]
        for chunk in llm.stream("Name three colours."):
            print(chunk.text, end="")
        llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?").tool_calls
        llm.with_structured_output(City).invoke("Paris is the capital of France.")
        ```

        Constructing it loads nothing; the members load on first use (``llm.load()`` loads them
        now). Chat models and LlamaIndex LLMs with the same members share one loaded engine.
        ``astream``, ``ainvoke`` and ``abatch`` run the engine in a worker thread (cancelling
        them stops the decoding); ``batch`` makes concurrent engine calls, which the engine's
        scheduler decodes together. Tool calls and structured output are constrained decoding:
        a forced call (``tool_choice="any"``, ``"required"`` or a name) or a schema always parses.
        The behaviour (options, stop strings, tool-call streaming, usage) is the chat core's,
        the same in every front end: see ``docs/langchain.md``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    members: list[str | MemberSpec] = Field(description=FIELD_DOCS["members"])
    top_k: int = Field(default=10, description=FIELD_DOCS["top_k"])
    weights: list[float] | None = Field(default=None, description=FIELD_DOCS["weights"])
    cache_dir: str | None = Field(default=None, description=FIELD_DOCS["cache_dir"])
    prefix_cache: int | str = Field(default="auto", description=FIELD_DOCS["prefix_cache"])

    model_name: str = ""
    """Name reported in response metadata and traces; defaults to ``unite:`` and the members'
    names joined with ``+``."""

    temperature: float = Field(default=0.0, description=FIELD_DOCS["temperature"])

    max_tokens: int | None = None
    """Most tokens to generate per call (``None``: 256). A forced tool call or structured output
    closes its JSON within this budget."""

    min_tokens: int = Field(default=0, description=FIELD_DOCS["min_tokens"])
    top_p: float = Field(default=1.0, description=FIELD_DOCS["top_p"])
    seed: int | None = Field(default=None, description=FIELD_DOCS["seed"])

    n: int = 1
    """Choices per call (1..16), as ``ChatOpenAI``'s ``n``: ``generate``/``agenerate`` return
    ``n`` generations per input (``invoke`` the first); their rows decode together, each with a
    random stream of its own (with a ``seed``, the first choice is the ``n=1`` answer). Streaming
    needs ``n=1``, as ``ChatOpenAI``'s does."""

    gate: float | None = Field(default=None, description=FIELD_DOCS["gate"])
    stop: list[str] | None = Field(default=None, description=FIELD_DOCS["stop"])

    streaming: bool = False
    """Whether ``invoke`` streams internally (so ``on_llm_new_token`` callbacks fire)."""

    timeout: float | None = None
    """Accepted for drop-in compatibility with hosted chat models. Decoding is local and is not
    interrupted; bound its time with ``max_tokens``."""

    max_retries: int = 0
    """Accepted for drop-in compatibility. Nothing is retried: local failures are not transient
    (a missing model, a prompt longer than the context window) and retrying cannot fix them."""

    max_json_string_length: int | None = Field(
        default=512, ge=1, description=FIELD_DOCS["max_json_string_length"]
    )

    max_batch_size: int = Field(default=16, ge=1)
    """Most inputs of one ``batch``/``abatch`` in flight at once (LangChain's
    ``max_concurrency`` when the config sets none); the engine's scheduler decodes the calls
    that wait together in one batch."""

    def __init__(self, **data: Any) -> None:
        constructed(super().__init__, "UniTEChatModel", data)
        check_defaults(self, self._defaults())

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, values: Any) -> Any:
        whole = ("top_k", "max_tokens", "min_tokens", "seed", "n")
        return coerce_fields(values, whole) if isinstance(values, dict) else values

    def _convert_input(self, model_input: LanguageModelInput) -> PromptValue:
        """LangChain's conversion; what it refuses is the package's ``InputError``."""
        try:
            return super()._convert_input(model_input)
        except (ValueError, TypeError, NotImplementedError) as e:
            raise e if isinstance(e, UniteError) else input_error(model_input, e) from e

    @model_validator(mode="after")
    def _default_model_name(self) -> UniTEChatModel:
        if not self.model_name:
            self.model_name = default_model_name(self.members)
        return self

    # -- LangChain plumbing --------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "unite-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "members": [m if isinstance(m, str) else m.model_dump() for m in self.members],
            **{k: getattr(self, k) for k in _OPTION_FIELDS},
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=_PROVIDER,
            ls_model_name=kwargs["model"]
            if isinstance(kwargs.get("model"), str)
            else self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stops = stop_strings(stop if stop is not None else self.stop)
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        return model_profile(self.members)

    # -- the engine and the chat core ------------------------------------------------------------

    def _ensemble_config(self) -> EnsembleConfig:
        return ensemble_of(self)

    def load(self) -> UniTEEngine:
        """The shared engine for these members, loading them now if no one has yet."""
        engine = get_engine(ensemble_of(self))
        profile = self.profile
        # Our own profile (not one the user gave) learns the context window once it is known.
        known = profile is None or "max_input_tokens" in profile
        if not known and profile == self._resolve_model_profile():
            self.profile = cast(
                ModelProfile, {**(profile or {}), "max_input_tokens": engine.context_window}
            )
        return engine

    @property
    def engine(self) -> UniTEEngine:
        """The shared engine (loads the members on first access, as ``load()``)."""
        return self.load()

    def _defaults(self) -> ChatDefaults:
        return ChatDefaults.from_fields(self)

    @property
    def core(self) -> ChatCore:
        """The chat core with these fields as its defaults (the engine loads on first call)."""
        return ChatCore(self.load, defaults=self._defaults(), model_name=self.model_name)

    # -- generation ----------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        results = self.core.choices(to_core_request(messages, stop, kwargs, self.model_name))
        return ChatResult(generations=[ai_message(r) for r in results])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = to_core_request(messages, stop, kwargs, self.model_name)
        return ChatResult(generations=[ai_message(r) for r in await self.core.achoices(request)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._one_choice(to_core_request(messages, stop, kwargs, self.model_name))
        chunks = self.core.stream(request)
        try:
            for chunk in chunks:
                item = generation_chunk(chunk)
                if run_manager:
                    run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
        finally:
            cast(Any, chunks).close()  # a consumer that stops early cancels the engine request

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._one_choice(to_core_request(messages, stop, kwargs, self.model_name))
        chunks = await self.core.astream(request)
        try:
            async for chunk in chunks:
                item = generation_chunk(chunk)
                if run_manager:
                    await run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
        finally:
            await chunks.aclose()  # cancelled or stopped early: the engine request is cancelled

    def _one_choice(self, request: ChatRequest) -> ChatRequest:
        """A streamed call's request: ``n`` must be 1, as ``ChatOpenAI`` requires."""
        n = n_choices(self._defaults(), request.options)
        if n != 1:
            raise ConfigError(f"n={n}: streaming gives one choice; set n=1 to stream", param="n")
        return request

    # -- batches -------------------------------------------------------------------------------

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[AIMessage]:
        """LangChain's per-input batch (callbacks, tracing and errors stay per input), with at
        most ``max_batch_size`` inputs in flight: their engine calls wait together, and the
        engine's scheduler decodes them as one batch."""
        config = self._batch_config(config)
        return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[AIMessage]:
        """``batch`` without blocking the event loop."""
        config = self._batch_config(config)
        return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    def _batch_config(
        self, config: RunnableConfig | list[RunnableConfig] | None
    ) -> RunnableConfig | list[RunnableConfig]:
        if isinstance(config, list):
            return config
        out = cast(RunnableConfig, dict(config or {}))
        out.setdefault("max_concurrency", self.max_batch_size)
        return out

    # -- tools and structured output -----------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: their schemas go into each member's chat template (or the portable
        fallback), and the decoding is constrained to well-formed calls.

        Args:
            tools: LangChain tools, functions, pydantic classes, TypedDicts or OpenAI tool dicts.
            tool_choice: ``"auto"`` (default: text or a call, the ensemble decides), ``"any"``,
                ``"required"`` or ``True`` (at least one call), a tool's name or
                ``{"type": "function", "function": {"name": ...}}`` (that tool), ``"none"``
                (text only; the tools are not shown to the members).
            parallel_tool_calls: allow several calls in one answer. Off by default: small
                members tend to repeat a call until the token budget ends.
            kwargs: further call options (``max_tokens``, ``temperature`` ...).
        """
        formatted = [openai_tool(t, n) for n, t in enumerate(tools)]
        choice = _choice(tool_choice, formatted)  # a bad choice fails here, not later
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return self.bind(tools=formatted, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """A runnable whose output follows ``schema`` (always: the decoding is constrained).

        Args:
            schema: a pydantic class (the output is an instance), a TypedDict or a JSON schema
                (the output is a dict); only ``json_mode`` may omit it (any JSON object).
            method: ``"json_schema"`` (the answer is the JSON instance), ``"function_calling"``
                (the answer is a forced call of a tool with that schema) or ``"json_mode"``
                (a JSON object; constrained to ``schema`` too when one is given, since small
                members do not follow a schema described in prose).
            include_raw: return ``{"raw", "parsed", "parsing_error"}`` instead.
            strict: accepted for compatibility; the output is always strict.
        """
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        return structured_output(self, schema, method, include_raw, strict)


def _choice(choice: Any, tools: list[dict[str, Any]]) -> str:
    """The core's tool choice for LangChain's spellings (``"any"``, ``True`` ...)."""
    return tool_choice(choice, tool_names(tools))
