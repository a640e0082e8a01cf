"""Log-probabilities through the server: chat ``logprobs``/``top_logprobs`` and the legacy
completions ``logprobs: N``, from the ensemble's mixed distribution over the union.

The figures must equal an independent computation: the slow literal reference
(``reference.py``) run on the same prompt ids, whose mixed distribution at each step gives the
top strings and their probabilities. Also: the chat core keeps per-token provenance only when a
call asks, and bad values are 400s in OpenAI's error shape.
"""

from __future__ import annotations

import math

import httpx
import openai
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from reference import END, reference_of
from server_harness import running

from unite_integrations.chat import ChatCore, ChatOptions, ChatRequest, Message
from unite_integrations.errors import ConfigError

USER = [{"role": "user", "content": "Hello world"}]
EPS = 1e-5


@pytest.fixture(scope="module")
def base(hetero):
    with running(hetero, model_name="tiny") as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base, api_key="none", max_retries=0)


def _dists(engine, prompt, budget):
    """The reference's mixed distribution at each step for ``prompt`` (text or messages, as the
    chat core hands it to the engine)."""
    return reference_of(engine, prompt, budget).dists


def _chat_prompt(engine):
    return ChatCore(engine).prepare(ChatRequest(messages=(Message("user", "Hello world"),))).prompt


def _key(engine, token: str, data: list[int]) -> object:
    """A top entry as the reference names strings: END (shown as the primary's end token)."""
    return END if token == engine.members[0].tokenizer.eos_token else bytes(data)


def _check_entries(engine, content, dists, n):
    assert content and len(dists) >= len(content)
    for entry, dist in zip(content, dists):
        top = entry.top_logprobs
        best = sorted(dist.items(), key=lambda e: -e[1])[:n]
        assert len(top) == min(n, len(dist)) <= n
        logprobs = [t.logprob for t in top]
        assert logprobs == sorted(logprobs, reverse=True)
        assert sum(math.exp(x) for x in logprobs) <= 1 + EPS
        # Greedy: the chosen token is the most likely one, with the same figure.
        assert (top[0].token, top[0].bytes) == (entry.token, entry.bytes)
        assert top[0].logprob == entry.logprob
        assert [_key(engine, t.token, t.bytes) for t in top] == [s for s, _ in best]
        assert logprobs == pytest.approx([math.log(p) for _, p in best], abs=EPS)
        assert entry.logprob == pytest.approx(math.log(dist[bytes(entry.bytes)]), abs=EPS)


@pytest.mark.parametrize("n", [1, 4, 20])
def test_chat_top_logprobs_equal_the_reference(hetero, client, n):
    r = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=6, logprobs=True, top_logprobs=n
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    _check_entries(hetero, content, _dists(hetero, _chat_prompt(hetero), 6), n)


def test_chat_top_logprobs_stream(hetero, client):
    sync = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=6, logprobs=True, top_logprobs=3
    )
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=USER, max_tokens=6, logprobs=True, top_logprobs=3, stream=True
        )
    )
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [t.model_dump() for t in streamed] == [
        t.model_dump() for t in sync.choices[0].logprobs.content
    ]
    _check_entries(hetero, streamed, _dists(hetero, _chat_prompt(hetero), 6), 3)


def test_logprobs_without_top_logprobs_gives_empty_lists(client):
    r = client.chat.completions.create(model="tiny", messages=USER, max_tokens=4, logprobs=True)
    assert all(t.top_logprobs == [] for t in r.choices[0].logprobs.content)
    r = client.chat.completions.create(model="tiny", messages=USER, max_tokens=4, top_logprobs=0)
    assert r.choices[0].logprobs is None


@pytest.mark.parametrize("stream", [False, True])
def test_completions_logprobs_n(hetero, client, stream):
    n, prompt = 3, "The capital of France is"
    r = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=6, logprobs=n, stream=stream
    )
    if stream:
        r = [c for c in r if c.choices and c.choices[0].logprobs][-1]
    lp = r.choices[0].logprobs
    dists = _dists(hetero, prompt, 6)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.text_offset[0] == 0
    for token, logprob, top, dist in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, dists):
        assert 1 <= len(top) <= n + 1 and token in top
        assert top[token] == pytest.approx(logprob, abs=EPS)
        assert max(top.values()) == pytest.approx(logprob, abs=EPS)  # greedy: chosen is best
        best = sorted(dist.values(), reverse=True)[:n]
        assert sorted(top.values(), reverse=True) == pytest.approx(
            [math.log(p) for p in best], abs=EPS
        )


def test_completions_logprobs_zero_gives_the_chosen_tokens(client):
    r = client.completions.create(model="tiny", prompt="Hello world", max_tokens=4, logprobs=0)
    lp = r.choices[0].logprobs
    assert [list(d) for d in lp.top_logprobs] == [[t] for t in lp.tokens]
    assert [d[t] for d, t in zip(lp.top_logprobs, lp.tokens)] == lp.token_logprobs


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/chat/completions",
            {"messages": USER, "logprobs": True, "top_logprobs": 21},
            "top_logprobs",
        ),
        (
            "/chat/completions",
            {"messages": USER, "logprobs": True, "top_logprobs": -1},
            "top_logprobs",
        ),
        ("/chat/completions", {"messages": USER, "top_logprobs": 3}, "top_logprobs"),
        (
            "/chat/completions",
            {"messages": USER, "logprobs": True, "top_logprobs": 2.5},
            "top_logprobs",
        ),
        ("/completions", {"prompt": "x", "logprobs": 6}, "logprobs"),
        ("/completions", {"prompt": "x", "logprobs": -1}, "logprobs"),
    ],
)
def test_bad_logprob_values_are_openai_400s(base, client, path, body, param):
    r = httpx.post(base + path, json={"model": "tiny", "max_tokens": 2, **body}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    with pytest.raises(openai.BadRequestError) as info:  # the client sees the same
        client.chat.completions.create(model="tiny", messages=USER, top_logprobs=5)
    assert info.value.param == "top_logprobs"


# -- the chat core's option ---------------------------------------------------------------------


def test_chat_core_keeps_tokens_only_when_asked(hetero):
    core = ChatCore(hetero)
    ask = (Message("user", "Hello world"),)

    def call(**options):
        return core.invoke(ChatRequest(messages=ask, options=ChatOptions(max_tokens=4, **options)))

    plain = call()
    assert plain.tokens == () and "tokens" not in plain.metadata()["provenance"]
    kept = call(token_provenance=True)
    assert len(kept.tokens) == kept.usage.output_tokens and all(t.top is None for t in kept.tokens)
    assert "".join(t.text for t in kept.tokens) == kept.text == plain.text
    top = call(top_logprobs=2)  # implies token_provenance
    assert [len(t.top) for t in top.tokens] == [2] * top.usage.output_tokens
    assert top.metadata()["provenance"]["tokens"][0]["top"][0]["logprob"] <= 0
    streamed = [
        c.result
        for c in core.stream(
            ChatRequest(messages=ask, options=ChatOptions(max_tokens=4, top_logprobs=2))
        )
        if c.result
    ]
    assert streamed[0].tokens == top.tokens


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": True}, "top_logprobs"),
        ({"token_provenance": "yes"}, "token_provenance"),
    ],
)
def test_chat_core_refuses_bad_values(hetero, options, field):
    with pytest.raises(ConfigError, match=field):
        ChatCore(hetero).prepare(
            ChatRequest(messages=(Message("user", "x"),), options=ChatOptions(**options))
        )
