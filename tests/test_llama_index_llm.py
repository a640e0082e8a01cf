"""``UniTELLM`` on tiny heterogeneous models: every LlamaIndex path, tools, agents, errors.

The members are the byte-level BPE (ChatML template) and SentencePiece BPE (Gemma template) tiny
models of ``tiny_models``, with ``context_window=4096`` since tool descriptions and templates
exceed their 512 trained positions (RoPE copes). The engine comes from the shared registry, as in
applications; it is built here with the invariant checks on and a scratch cache directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from tiny_models import tiny_model_dir

from unite_integrations import MemberSpec
from unite_integrations.engine.registry import get_engine, loaded_engines
from unite_integrations.errors import ConfigError, ContextWindowError, InputError, UniteError

llama_index = pytest.importorskip("llama_index.core")

from llama_index.core.agent.workflow import FunctionAgent, ToolCall, ToolCallResult  # noqa: E402
from llama_index.core.base.llms.base import BaseLLM  # noqa: E402
from llama_index.core.base.llms.types import (  # noqa: E402
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    ImageBlock,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler  # noqa: E402
from llama_index.core.callbacks.token_counting import TokenCountingHandler  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.instrumentation.events.llm import (  # noqa: E402
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
)
from llama_index.core.llms.function_calling import FunctionCallingLLM  # noqa: E402
from llama_index.core.prompts import PromptTemplate  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from unite_integrations.chat.messages import render  # noqa: E402
from unite_integrations.llama_index import UniTELLM  # noqa: E402
from unite_integrations.llama_index._messages import to_core_messages  # noqa: E402


def to_engine_messages(messages):
    """The engine's message dicts for a conversation, as the chat core renders them."""
    return render(to_core_messages(messages))


FAMILIES = ("bytelevel_bpe", "sentencepiece_bpe")
HELLO = [ChatMessage(role="user", content="Hello")]
N = 12  # new tokens for plain calls: enough to see text, few enough to stay fast
TOOL_TOKENS = 128  # a tool call in the tiny vocabularies takes 60-90 steps


def members() -> list[MemberSpec]:
    return [MemberSpec(source=str(tiny_model_dir(f)), context_window=4096) for f in FAMILIES]


@pytest.fixture(scope="module", autouse=True)
def tiny_setting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Engines loaded here use a scratch cache and check their invariants at every step.

    And one torch thread: tiny models gain nothing from intra-op threads, and on a shared, busy
    2-core machine torch's thread pool makes each 64-wide matmul wait (measured: 20 s instead of
    0.4 s for one tool call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNITE_CACHE_DIR", str(tmp_path_factory.mktemp("llama-index-cache")))
        mp.setenv("UNITE_CHECK_INVARIANTS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llm() -> UniTELLM:
    return UniTELLM(members=members(), top_k=5, max_new_tokens=N)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


ADD = FunctionTool.from_defaults(add)


def deltas_and_texts(chunks: list[Any]) -> tuple[str, list[str]]:
    return "".join(c.delta or "" for c in chunks), [
        c.text if isinstance(c, CompletionResponse) else (c.message.content or "") for c in chunks
    ]


# -- the class ------------------------------------------------------------------------------------


def test_is_a_llama_index_function_calling_llm(llm):
    assert isinstance(llm, BaseLLM) and isinstance(llm, FunctionCallingLLM)
    assert UniTELLM.class_name() == "UniTELLM"
    for name in ("members", "top_k", "weights", "temperature", "max_new_tokens", "top_p", "seed"):
        assert UniTELLM.model_fields[name].description, name
    assert UniTELLM.model_fields["stop"].description
    data = llm.to_dict()  # serialisable: the engine is private, never dumped
    assert data["class_name"] == "UniTELLM" and "_engine" not in data and "engine" not in data


def test_metadata_is_honest(llm):
    meta = llm.metadata
    engine = llm.engine
    probes = ([{"role": "user", "content": "x"}], [{"role": "system", "content": "x"}] * 2)
    templates = max(len(m.encode_prompt(p)) for m in engine.members for p in probes)
    assert engine.context_window == 4096
    assert templates <= 4096 - meta.context_window < 100
    assert meta.num_output == N
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.model_name == "unite:bytelevel_bpe-seed0+sentencepiece_bpe-seed0"
    assert UniTELLM(members=members(), model_name="mine").metadata.model_name == "mine"


def test_payload_for_callbacks_loads_nothing():
    fresh = UniTELLM(members=members(), top_k=4)  # a configuration no test loads
    payload = fresh.to_payload()
    assert payload["model_name"] == "unite:bytelevel_bpe-seed0+sentencepiece_bpe-seed0"
    assert "context_window" not in payload and fresh._engine is None
    _ = fresh.engine
    assert fresh.to_payload()["context_window"] == fresh.metadata.context_window


def test_bad_configuration_fails_at_construction():
    with pytest.raises(ConfigError, match="top_k"):
        UniTELLM(members=members(), top_k=0)
    with pytest.raises(ConfigError, match="temperature"):
        UniTELLM(members=members(), temperature=-1)
    with pytest.raises(ConfigError, match="weights"):
        UniTELLM(members=members(), weights=[1.0])
    with pytest.raises(ConfigError, match="stop"):
        UniTELLM(members=members(), stop=[""])


# -- completion and chat --------------------------------------------------------------------------


def test_complete_formatted_is_raw_text_and_unformatted_is_a_user_turn(llm):
    engine = llm.engine
    raw = llm.complete("Once upon a time", formatted=True)
    assert raw.text == engine.generate(["Once upon a time"], max_new_tokens=N)[0].text
    turn = llm.complete("Hello")
    user = [{"role": "user", "content": "Hello"}]
    assert turn.text == engine.generate([user], max_new_tokens=N)[0].text
    llm_sys = UniTELLM(members=members(), top_k=5, max_new_tokens=N, system_prompt="Be brief.")
    both = [{"role": "system", "content": "Be brief."}, *user]
    assert llm_sys.complete("Hello").text == engine.generate([both], max_new_tokens=N)[0].text


def test_chat_renders_each_members_template(llm):
    messages = [
        ChatMessage(role="system", content="You are terse."),
        ChatMessage(role="user", content="Hello"),
        ChatMessage(role="assistant", content="Hi."),
        ChatMessage(role="user", content="What is the sky?"),
    ]
    r = llm.chat(messages)
    dicts = [{"role": m.role.value, "content": m.content} for m in messages]
    expected = llm.engine.generate([dicts], max_new_tokens=N)[0]
    assert r.message.role == MessageRole.ASSISTANT
    assert r.message.content == expected.text
    assert r.raw["usage"]["input_tokens"] == expected.usage.input_tokens
    # the engine rendered each member's own template: the two members count different prompts
    per_member = r.raw["usage"]["input_tokens_per_member"]
    assert len(set(per_member.values())) == 2


def test_usage_and_provenance_in_raw(llm):
    r = llm.chat(HELLO)
    usage = r.raw["usage"]
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= N
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert r.additional_kwargs == {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
    }
    # N new tokens and no stop strings: an answer shorter than N ended with END.
    assert r.raw["finish_reason"] == ("stop" if usage["output_tokens"] < N else "length")
    prov = r.raw["provenance"]
    assert set(prov["win_share"]) == set(llm.engine.member_names)
    assert 0.0 <= prov["agreement_rate"] <= 1.0


def test_per_call_options_override_fields(llm):
    short = llm.complete("Once upon a time", formatted=True, max_new_tokens=2)
    assert short.raw["usage"]["output_tokens"] <= 2
    assert llm.complete("Once upon a time", formatted=True, max_tokens=2).text == short.text
    sampled = [
        llm.chat(HELLO, temperature=1.0, seed=7, max_new_tokens=8).message.content for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    with pytest.raises(ConfigError, match="unknown keyword argument 'frequency_penalty'"):
        llm.chat(HELLO, frequency_penalty=1.0)


def test_stop_strings_end_generation_and_are_never_emitted(llm):
    prompt = "Once upon a time"
    full = llm.complete(prompt, formatted=True, max_new_tokens=24).text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), full
    head = full[: full.index(stop)]
    r = llm.complete(prompt, formatted=True, max_new_tokens=24, stop=[stop])
    assert r.text == head and r.raw["finish_reason"] == "stop"
    streamed = list(llm.stream_complete(prompt, formatted=True, max_new_tokens=24, stop=stop))
    assert deltas_and_texts(streamed)[0] == head
    field = UniTELLM(members=members(), top_k=5, max_new_tokens=24, stop=[stop])
    assert field.complete(prompt, formatted=True).text == head


# -- streaming ------------------------------------------------------------------------------------


def test_stream_complete_deltas_join_to_the_final_text(llm):
    chunks = list(llm.stream_complete("Once upon a time", formatted=True))
    joined, texts = deltas_and_texts(chunks)
    assert len(chunks) > 2
    assert joined == texts[-1] == llm.complete("Once upon a time", formatted=True).text
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))  # cumulative
    assert chunks[-1].raw["usage"]["output_tokens"] > 0
    assert all(c.raw is None for c in chunks[:-1])


def test_stream_chat_deltas_join_to_the_final_text(llm):
    chunks = list(llm.stream_chat(HELLO))
    joined, texts = deltas_and_texts(chunks)
    assert joined == texts[-1] == llm.chat(HELLO).message.content
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))
    assert all(isinstance(c, ChatResponse) for c in chunks)
    assert chunks[-1].raw["usage"]["input_tokens"] > 0


def test_stream_left_early_releases_the_engine(llm):
    stream = llm.stream_complete("Once upon a time", formatted=True, max_new_tokens=8)
    next(stream)
    stream.close()
    assert llm.complete("Hello", formatted=True, max_new_tokens=2).text is not None


# -- async ----------------------------------------------------------------------------------------


def test_async_paths_equal_the_sync_ones(llm):
    async def run() -> tuple[Any, ...]:
        completion = await llm.acomplete("Once upon a time", formatted=True)
        chat = await llm.achat(HELLO)
        stream_c = [c async for c in await llm.astream_complete("Once upon a time", formatted=True)]
        stream_ch = [c async for c in await llm.astream_chat(HELLO)]
        return completion, chat, stream_c, stream_ch

    completion, chat, stream_c, stream_ch = asyncio.run(run())
    assert completion.text == llm.complete("Once upon a time", formatted=True).text
    assert chat.message.content == llm.chat(HELLO).message.content
    joined, texts = deltas_and_texts(stream_c)
    assert joined == texts[-1] == completion.text
    joined, texts = deltas_and_texts(stream_ch)
    assert joined == texts[-1] == chat.message.content
    assert stream_ch[-1].raw["usage"]["output_tokens"] > 0


def test_async_calls_do_not_block_the_event_loop(llm):
    """A ticker keeps running while the ensemble generates in a worker thread."""

    async def run(call: Any) -> int:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        await call()
        done.set()
        await task
        return ticks

    long = {"max_new_tokens": 40, "min_new_tokens": 40}

    async def achat() -> None:
        await llm.achat(HELLO, **long)

    async def astream() -> None:
        async for _ in await llm.astream_chat(HELLO, **long):
            await asyncio.sleep(0)

    assert asyncio.run(run(achat)) >= 5
    assert asyncio.run(run(astream)) >= 5


def test_async_stream_left_early_stops_the_worker(llm):
    async def run() -> str:
        stream = await llm.astream_complete("Once upon a time", formatted=True, max_new_tokens=40)
        first = await anext(stream)
        await stream.aclose()
        return first.text

    assert isinstance(asyncio.run(run()), str)
    assert llm.complete("Hello", formatted=True, max_new_tokens=2).text is not None


# -- callbacks and instrumentation ----------------------------------------------------------------


class _Events(BaseEventHandler):
    events: list[Any] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "_Events"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)


def test_callbacks_and_instrumentation_see_every_call(llm):
    debug, tokens = LlamaDebugHandler(), TokenCountingHandler()
    llm_cb = UniTELLM(
        members=members(),
        top_k=5,
        max_new_tokens=N,
        callback_manager=CallbackManager([debug, tokens]),
    )
    handler = _Events()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    try:
        r = llm_cb.chat(HELLO)
        list(llm_cb.stream_chat(HELLO))
        llm_cb.complete("Hello", formatted=True)
        asyncio.run(llm_cb.achat(HELLO))
    finally:
        dispatcher.event_handlers.remove(handler)
    assert len(debug.get_event_pairs(CBEventType.LLM)) == 4
    kinds = [type(e) for e in handler.events]
    assert kinds.count(LLMChatStartEvent) == 3 and kinds.count(LLMChatEndEvent) == 3
    assert kinds.count(LLMCompletionEndEvent) == 1
    counted = tokens.llm_token_counts[0]  # TokenCountingHandler reads raw["usage"]
    assert counted.prompt_token_count == r.raw["usage"]["input_tokens"]
    assert counted.completion_token_count == r.raw["usage"]["output_tokens"]


# -- tool calling ---------------------------------------------------------------------------------


def _calls(r: ChatResponse) -> list[ToolCallBlock]:
    return [b for b in r.message.blocks if isinstance(b, ToolCallBlock)]


def test_required_tool_call_is_a_tool_call_block(llm):
    r = llm.chat_with_tools(
        [ADD], user_msg="What is 2 + 3?", tool_required=True, max_new_tokens=TOOL_TOKENS
    )
    (call,) = _calls(r)
    assert call.tool_name == "add" and set(call.tool_kwargs) == {"a", "b"}
    assert all(isinstance(v, int) for v in call.tool_kwargs.values())
    assert "<tool_call>" not in (r.message.content or "")
    (selection,) = llm.get_tool_calls_from_response(r)
    assert (selection.tool_id, selection.tool_name) == (call.tool_call_id, "add")
    assert selection.tool_kwargs == call.tool_kwargs
    assert r.message.additional_kwargs["tool_calls"][0]["function"]["name"] == "add"


def test_tool_choice_by_name_and_openai_dicts(llm):
    def shout(text: str) -> str:
        """Repeat text in capitals."""
        return text.upper()

    tools = [ADD, FunctionTool.from_defaults(shout)]
    r = llm.chat_with_tools(
        tools, user_msg="Say hi loudly", tool_choice="shout", max_new_tokens=TOOL_TOKENS
    )
    assert [c.tool_name for c in _calls(r)] == ["shout"]
    spec = ADD.metadata.to_openai_tool()
    r = llm.chat(
        [ChatMessage(role="user", content="Add 1 and 2")],
        tools=[spec],
        tool_choice={"type": "function", "function": {"name": "add"}},
        max_new_tokens=TOOL_TOKENS,
    )
    assert [c.tool_name for c in _calls(r)] == ["add"]
    with pytest.raises(ConfigError, match="tool_choice 'nope'"):
        llm.chat_with_tools([ADD], user_msg="hi", tool_choice="nope")


def test_auto_and_none_tool_choice(llm):
    auto = llm.chat_with_tools([ADD], user_msg="Hello", max_new_tokens=TOOL_TOKENS)
    # "auto": any call is complete and valid, and no tool-call markup is left in the content.
    assert "<tool_call>" not in (auto.message.content or "")
    assert all(c.tool_name == "add" and set(c.tool_kwargs) == {"a", "b"} for c in _calls(auto))
    none = llm.chat_with_tools([ADD], user_msg="Hello", tool_choice="none")
    assert not _calls(none) and none.message.content == llm.chat(HELLO).message.content


def test_async_and_streamed_tool_calls(llm):
    async def run() -> tuple[ChatResponse, list[ChatResponse]]:
        r = await llm.achat_with_tools(
            [ADD], user_msg="What is 2 + 3?", tool_required=True, max_new_tokens=TOOL_TOKENS
        )
        stream = await llm.astream_chat_with_tools(
            [ADD], user_msg="What is 2 + 3?", tool_required=True, max_new_tokens=TOOL_TOKENS
        )
        return r, [c async for c in stream]

    r, chunks = asyncio.run(run())
    sync = llm.chat_with_tools(
        [ADD], user_msg="What is 2 + 3?", tool_required=True, max_new_tokens=TOOL_TOKENS
    )
    assert _calls(r)[0].tool_kwargs == _calls(sync)[0].tool_kwargs
    # streamed: the call shows up whole once its block closes (and in the last chunk, with
    # every call); no markup leaks into deltas
    first = next(i for i, c in enumerate(chunks) if _calls(c))
    assert all(len(_calls(c)) == 1 for c in chunks[first:])
    assert _calls(chunks[-1])[0].tool_kwargs == _calls(sync)[0].tool_kwargs
    assert _calls(chunks[first])[0].tool_call_id == _calls(chunks[-1])[0].tool_call_id
    assert "".join(c.delta or "" for c in chunks) == ""
    streamed_sync = list(
        llm.stream_chat_with_tools(
            [ADD], user_msg="What is 2 + 3?", tool_required=True, max_new_tokens=TOOL_TOKENS
        )
    )
    assert _calls(streamed_sync[-1])[0].tool_kwargs == _calls(sync)[0].tool_kwargs


def test_no_tool_call_raises_only_when_asked(llm):
    r = llm.chat(HELLO)
    assert llm.get_tool_calls_from_response(r, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="expected at least one tool call"):
        llm.get_tool_calls_from_response(r)


def test_single_call_kept_without_parallel_calls(llm):
    blocks = [ToolCallBlock(tool_call_id=f"c{i}", tool_name="add", tool_kwargs={}) for i in (1, 2)]
    r = ChatResponse(message=ChatMessage(role="assistant", blocks=blocks))
    kept = llm._validate_chat_with_tools_response(r, [ADD], allow_parallel_tool_calls=False)
    assert [c.tool_call_id for c in _calls(kept)] == ["c1"]


HISTORY = [
    ChatMessage(role="user", content="What is 2 + 3?"),
    ChatMessage(
        role="assistant",
        blocks=[
            ToolCallBlock(tool_call_id="call_1", tool_name="add", tool_kwargs={"a": 2, "b": 3})
        ],
    ),
    ChatMessage(role="tool", content="5", additional_kwargs={"tool_call_id": "call_1"}),
]
HISTORY_DICTS = [
    {"role": "user", "content": "What is 2 + 3?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "add", "arguments": {"a": 2, "b": 3}},
            }
        ],
    },
    {"role": "tool", "content": "5", "tool_call_id": "call_1"},
]


def test_tool_calls_and_results_are_rendered_back(llm):
    assert to_engine_messages(HISTORY) == HISTORY_DICTS
    r = llm.chat(HISTORY, tools=[ADD], max_new_tokens=TOOL_TOKENS)
    tools = [ADD.metadata.to_openai_tool(skip_length_check=True)]
    from unite_integrations.engine.constraints import Constraint

    expected = llm.engine.generate(
        [HISTORY_DICTS],
        tools=tools,
        constraint=Constraint.tool_calls(tools, "auto"),
        max_new_tokens=TOOL_TOKENS,
    )[0]
    assert r.raw["text"] == expected.text
    assert r.raw["usage"]["input_tokens"] == expected.usage.input_tokens


def test_legacy_tool_calls_and_role_aliases_are_read():
    legacy = ChatMessage(
        role="assistant",
        content="",
        additional_kwargs={
            "tool_calls": [
                {"id": "c9", "type": "function", "function": {"name": "add", "arguments": "{}"}}
            ]
        },
    )
    out = to_engine_messages(
        [
            ChatMessage(role=MessageRole.DEVELOPER, content="rules"),
            ChatMessage(role=MessageRole.CHATBOT, content="hi"),
            ChatMessage(role=MessageRole.MODEL, content="hey"),
            ChatMessage(role=MessageRole.FUNCTION, content="1", additional_kwargs={"name": "f"}),
            legacy,
            ChatMessage(role="user", blocks=[TextBlock(text="a"), TextBlock(text="b")]),
        ]
    )
    assert [m["role"] for m in out] == [
        "system",
        "assistant",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert out[3]["name"] == "f" and out[4]["tool_calls"][0]["id"] == "c9"
    assert out[5]["content"] == "a\nb"


def test_predict_and_call_runs_the_tool(llm):
    out = llm.predict_and_call(
        [ADD], user_msg="What is 2 + 3?", tool_required=True, max_new_tokens=TOOL_TOKENS
    )
    (source,) = out.sources
    assert source.tool_name == "add" and not source.is_error
    assert out.response == str(add(**source.raw_input["kwargs"]))


# -- structured output ----------------------------------------------------------------------------


class Person(BaseModel):
    """A person."""

    name: str
    age: int


def test_structured_predict_and_as_structured_llm(llm):
    prompt = PromptTemplate("Describe a person named {name}.")
    person = llm.structured_predict(Person, prompt, name="Ada", llm_kwargs={"max_new_tokens": 96})
    assert isinstance(person, Person)
    again = asyncio.run(
        llm.astructured_predict(Person, prompt, name="Ada", llm_kwargs={"max_new_tokens": 96})
    )
    assert isinstance(again, Person)
    structured = llm.as_structured_llm(Person)
    r = structured.chat([ChatMessage(role="user", content="Ada, 36")], max_new_tokens=96)
    assert isinstance(r.raw, Person)
    assert Person.model_validate_json(r.message.content or "") == r.raw
    assert isinstance(structured.complete("Ada, 36", max_new_tokens=96).raw, Person)


# -- query and chat engines ----------------------------------------------------------------------


def test_query_and_chat_engines_run_on_the_ensemble(llm):
    from llama_index.core import Document, Settings, VectorStoreIndex
    from llama_index.core.chat_engine import SimpleChatEngine
    from llama_index.core.embeddings import MockEmbedding

    docs = [
        Document(text="Varneth is the capital of Quillon."),
        Document(text="A drel is 12 pins."),
    ]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    saved = Settings._llm
    Settings.llm = llm  # what applications do; restored below
    try:
        response = index.as_query_engine(similarity_top_k=1).query("What is the capital?")
        assert isinstance(response.response, str) and len(response.source_nodes) == 1
        best = index.as_chat_engine(similarity_top_k=1)  # condense-plus-context
        assert isinstance(best.chat("What is the capital?").response, str)
        # (a second turn there asks the tiny members to condense the question, and an empty
        # condensed question makes LlamaIndex's retriever fail; "context" mode does not condense)
        chat = index.as_chat_engine(chat_mode="context", similarity_top_k=1)
        first = chat.chat("What is the capital?")
        streamed = chat.stream_chat("And the money?")
        text = "".join(streamed.response_gen)
        assert isinstance(first.response, str) and text == streamed.response
        assert len(chat.chat_history) == 4
        simple = SimpleChatEngine.from_defaults()
        assert simple.chat("Hello").response == llm.chat(HELLO).message.content
    finally:
        Settings._llm = saved


# -- agents ---------------------------------------------------------------------------------------


def _run_agent(agent: FunctionAgent, question: str) -> tuple[Any, list[Any]]:
    async def run() -> tuple[Any, list[Any]]:
        handler = agent.run(question)
        events = [
            e async for e in handler.stream_events() if isinstance(e, (ToolCall, ToolCallResult))
        ]
        return await handler, events

    return asyncio.run(run())


@pytest.mark.parametrize("streaming", [True, False])
def test_function_agent_calls_the_tool_and_answers(llm, streaming):
    """The first step is forced (``initial_tool_choice``, a grammar constraint), so the call
    parses; the tiny members then answer in text (greedy, so always the same text)."""
    seen: list[tuple[int, int]] = []

    def add_numbers(a: int, b: int) -> int:
        """Add two integers."""
        seen.append((a, b))
        return a + b

    agent_llm = UniTELLM(members=members(), top_k=5, max_new_tokens=TOOL_TOKENS)
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(add_numbers)],
        llm=agent_llm,
        initial_tool_choice="add_numbers",
        allow_parallel_tool_calls=False,
        streaming=streaming,
    )
    response, events = _run_agent(agent, "What is 2 + 3?")
    results = [e for e in events if isinstance(e, ToolCallResult)]
    assert len(seen) == 1 and len(results) == 1
    assert results[0].tool_name == "add_numbers"
    assert results[0].tool_output.content == str(sum(seen[0]))
    assert response.tool_calls and response.tool_calls[0].tool_name == "add_numbers"
    assert not _calls(ChatResponse(message=response.response))
    assert str(response) == (response.response.content or "")


def test_function_agent_with_a_return_direct_tool(llm):
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(add, return_direct=True)],
        llm=UniTELLM(members=members(), top_k=5, max_new_tokens=TOOL_TOKENS),
        initial_tool_choice="add",
    )
    response, events = _run_agent(agent, "What is 2 + 3?")
    (result,) = [e for e in events if isinstance(e, ToolCallResult)]
    assert str(response) == result.tool_output.content


# -- engine sharing -------------------------------------------------------------------------------


def test_equal_llms_share_one_engine(llm):
    strings = UniTELLM(members=[str(tiny_model_dir(f)) for f in FAMILIES], top_k=5)
    specs = UniTELLM(members=[MemberSpec(source=str(tiny_model_dir(f))) for f in FAMILIES], top_k=5)
    assert strings.ensemble_config == specs.ensemble_config
    assert strings.engine is specs.engine is get_engine(specs.ensemble_config)
    same = UniTELLM(members=members(), top_k=5, temperature=0.7, max_new_tokens=3)
    assert same.engine is llm.engine  # call options are not part of the engine's key
    assert UniTELLM(members=members(), top_k=3).engine is not llm.engine


def test_llm_and_langchain_chat_model_share_one_engine(llm):
    import unite_integrations.langchain.chat_model as chat_model

    before = {id(e) for e in loaded_engines()}
    model = chat_model.UniTEChatModel(members=members(), top_k=5)
    reply = model.invoke("Hello")
    assert isinstance(reply.content, str)
    assert {id(e) for e in loaded_engines()} == before  # nothing new was loaded
    assert id(llm.engine) in before


# -- bad input ------------------------------------------------------------------------------------


def test_empty_chat_is_an_input_error(llm):
    with pytest.raises(InputError, match="conversation is empty"):
        llm.chat([])
    with pytest.raises(InputError, match="conversation is empty"):
        llm.stream_chat([])
    with pytest.raises(InputError, match="conversation is empty"):
        asyncio.run(llm.achat([]))
    with pytest.raises(InputError, match="conversation is empty"):
        asyncio.run(llm.astream_chat([]))
    with pytest.raises(InputError, match="prompt is empty"):
        llm.complete("", formatted=True)  # a raw text with nothing to continue
    # Unformatted, "" is an empty user turn, allowed as in chat (docs/guarantees.md).
    assert llm.complete("").text == llm.chat([ChatMessage(role="user", content="")]).message.content


def test_unknown_role_is_an_input_error(llm):
    wizard = ChatMessage.model_construct(role="wizard", blocks=[TextBlock(text="hi")])
    with pytest.raises(InputError, match="role 'wizard'"):
        llm.chat([wizard])


def test_images_are_rejected_clearly(llm):
    image = ChatMessage(
        role="user",
        blocks=[TextBlock(text="What is this?"), ImageBlock(url="https://example.invalid/x.png")],
    )
    with pytest.raises(InputError, match=r"image block.*text only"):
        llm.chat([image])


def test_overlong_prompt_is_a_context_window_error():
    short = UniTELLM(members=[str(tiny_model_dir(f)) for f in FAMILIES], top_k=5, max_new_tokens=2)
    assert short.metadata.context_window < 512
    long = [ChatMessage(role="user", content="word " * 2000)]
    with pytest.raises(ContextWindowError, match="context window is 512"):
        short.chat(long)
    with pytest.raises(ContextWindowError):
        short.stream_chat(long)  # raised at the call, not at the first chunk
    with pytest.raises(ContextWindowError):
        asyncio.run(short.astream_complete("word " * 2000, formatted=True))
    assert issubclass(ContextWindowError, UniteError)


def test_tool_choice_without_tools_is_a_config_error(llm):
    with pytest.raises(ConfigError, match="needs tools"):
        llm.chat(HELLO, tool_choice="required")
