"""The OpenAI-compatible server, in-process on a free loopback port, with the tiny models.

Real clients talk to it (the ``openai`` package, sync and async, streaming; raw ``httpx`` for
the error cases), and greedy answers through HTTP must equal the engine's own.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import openai
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from server_harness import running

from unite_integrations.chat import ChatCore, ChatDefaults, ChatRequest, Message

USER = [{"role": "user", "content": "Hello world"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def base(hetero):
    # Short JSON strings: the tiny members would otherwise fill the budget inside one string.
    defaults = ChatDefaults(max_json_string_length=12)
    with running(hetero, model_name="tiny", api_key="sk-test", defaults=defaults) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base, api_key="sk-test", max_retries=0)


def _metrics(base: str) -> str:
    return httpx.get(base.removesuffix("/v1") + "/metrics").text


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def test_models_health_and_metrics(base, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny"]
    root = base.removesuffix("/v1")
    assert httpx.get(root + "/health").json()["status"] == "ok"
    card = httpx.get(base + "/models/tiny", headers={"Authorization": "Bearer sk-test"}).json()
    assert card["unite"]["members"] == ["bytelevel_bpe-seed0", "sentencepiece_bpe-seed0"]
    text = _metrics(base)
    assert 'unite_requests_total{endpoint="models",status="200"}' in text
    assert "# TYPE unite_requests_in_flight gauge" in text


def test_chat_greedy_equals_engine(hetero, client):
    r = client.chat.completions.create(model="tiny", messages=USER, max_tokens=10)
    want = hetero.generate([USER], max_new_tokens=10)[0]
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.completion_tokens == want.usage.output_tokens
    assert r.usage.prompt_tokens == want.usage.input_tokens
    ext = r.model_extra["unite"]
    assert ext["agreement_rate"] == pytest.approx(want.provenance.agreement_rate)
    assert ext["win_share"] == pytest.approx(want.provenance.win_share)
    assert "tokens" not in ext


def test_max_completion_tokens_stop_and_seed(hetero, client):
    r = client.chat.completions.create(model="tiny", messages=USER, max_completion_tokens=3)
    assert r.usage.completion_tokens <= 3 and r.choices[0].finish_reason == "length"
    full = hetero.generate([USER], max_new_tokens=12)[0].text
    stop = full.strip()[2:4]
    r = client.chat.completions.create(model="tiny", messages=USER, max_tokens=12, stop=[stop])
    assert stop not in r.choices[0].message.content
    assert full.startswith(r.choices[0].message.content)
    a, b = (
        client.chat.completions.create(
            model="tiny", messages=USER, max_tokens=8, temperature=0.9, top_p=0.9, seed=7
        )
        for _ in range(2)
    )
    assert a.choices[0].message.content == b.choices[0].message.content


def test_completions_string_and_list(hetero, client):
    prompts = ["The capital of France is", "Once upon a time"]
    want = hetero.generate(prompts, max_new_tokens=6)
    one = client.completions.create(model="tiny", prompt=prompts[0], max_tokens=6)
    assert one.choices[0].text == want[0].text
    both = client.completions.create(model="tiny", prompt=prompts, max_tokens=6)
    assert [c.text for c in both.choices] == [w.text for w in want]
    assert [c.index for c in both.choices] == [0, 1]
    stream = client.completions.create(model="tiny", prompt=prompts[1], max_tokens=6, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == want[1].text


def test_stream_equals_invoke_with_usage(client):
    whole = client.chat.completions.create(model="tiny", messages=USER, max_tokens=10)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=USER,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert "unite" in chunks[-2].model_extra


def test_async_client_concurrent(client):
    async def main() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=str(client.base_url), api_key="sk-test")
        prompts = ["Hello world", "The quick brown fox", "1 + 1 ="]

        async def one(p: str) -> str:
            r = await aclient.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": p}], max_tokens=6
            )
            return r.choices[0].message.content or ""

        async def streamed(p: str) -> str:
            s = await aclient.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": p}], max_tokens=6, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])

        out = await asyncio.gather(*(one(p) for p in prompts), *(streamed(p) for p in prompts))
        await aclient.close()
        return out

    out = asyncio.run(main())
    assert out[:3] == out[3:]


def test_tool_calls_required_named_and_none(client):
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=100,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    named = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=100,
    )
    assert named.choices[0].message.tool_calls[0].function.name == "get_weather"
    none = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=5,
    )
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].finish_reason in ("stop", "length")


def test_tool_call_stream_and_history(client):
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=100,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for d in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"name": "", "arguments": "", "id": ""})
            if d.id:
                entry["id"] = d.id
            if d.function and d.function.name:
                entry["name"] += d.function.name
            if d.function and d.function.arguments:
                entry["arguments"] += d.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    args = json.loads(calls[0]["arguments"])
    # The call and its result go back as history; the answer is text.
    follow = client.chat.completions.create(
        model="tiny",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": calls[0]["id"],
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps(args)},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=5,
    )
    assert follow.choices[0].message.content is not None


@pytest.mark.parametrize("kind", ["json_object", "json_schema"])
def test_response_format(client, kind):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    fmt = (
        {"type": "json_object"}
        if kind == "json_object"
        else {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    )
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "A person, as JSON."}],
        response_format=fmt,
        max_tokens=100,
    )
    data = json.loads(r.choices[0].message.content)
    assert isinstance(data, dict)
    if kind == "json_schema":
        assert set(data) == {"name", "age"} and isinstance(data["age"], int)


def test_logprobs_and_token_provenance(hetero, client):
    r = client.chat.completions.create(
        model="tiny",
        messages=USER,
        max_tokens=8,
        logprobs=True,
        extra_body={"unite": {"token_provenance": True}},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    tokens = r.model_extra["unite"]["tokens"]
    weights = hetero.config.weights
    for lp, tok in zip(content, tokens):
        p = sum(w * tok["probs"][m] for w, m in zip(weights, hetero.member_names))
        assert lp.logprob == pytest.approx(__import__("math").log(p))
        assert lp.logprob <= 0 and tok["winner"] in hetero.member_names
    stream = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=8, logprobs=True, stream=True
    )
    last = [c for c in stream if c.choices][-1]
    assert [t.token for t in last.choices[0].logprobs.content] == [t.token for t in content]


def test_chat_core_is_the_backend(hetero, client):
    """The server is a translator: its answer is the chat core's for the same request."""
    core = ChatCore(hetero)
    want = core.invoke(
        ChatRequest(messages=(Message("system", "Be brief."), Message("user", "Hi")))
    )
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    )
    assert r.choices[0].message.content == want.content


# -- errors ---------------------------------------------------------------------------------------

AUTH = {"Authorization": "Bearer sk-test"}


def _post(base: str, body: object, headers: dict[str, str] | None = None, raw: bytes | None = None):
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(
        base + "/chat/completions",
        content=content,
        headers={"Content-Type": "application/json", **AUTH, **(headers or {})},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("body", "raw", "status", "param"),
    [
        (None, b"{not json", 400, None),
        (None, b"[1, 2]", 400, None),
        ({"model": "tiny"}, None, 400, "messages"),
        ({"model": "tiny", "messages": []}, None, 400, "messages"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, None, 400, None),
        ({"model": "gpt-4o", "messages": USER}, None, 404, "model"),
        ({"model": "tiny", "messages": USER, "max_tokens": -1}, None, 400, "max_tokens"),
        ({"model": "tiny", "messages": USER, "max_tokens": 0}, None, 400, "max_tokens"),
        ({"model": "tiny", "messages": USER, "max_tokens": 10**9}, None, 400, "max_tokens"),
        ({"model": "tiny", "messages": USER, "temperature": -1}, None, 400, "temperature"),
        ({"model": "tiny", "messages": USER, "n": 17}, None, 400, "n"),  # over MAX_CHOICES
        (
            {"model": "tiny", "messages": USER, "top_logprobs": 21, "logprobs": True},
            None,
            400,
            "top_logprobs",
        ),
        ({"model": "tiny", "messages": USER, "top_logprobs": 2}, None, 400, "top_logprobs"),
        ({"model": "tiny", "messages": USER, "tool_choice": "required"}, None, 400, "tool_choice"),
        ({"model": "tiny", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, None, 400, "stop"),
        ({"model": "tiny", "messages": USER, "stop": [""]}, None, 400, "stop"),
        (
            {"model": "tiny", "messages": USER, "frequency_penalty": 0.5},
            None,
            400,
            "frequency_penalty",
        ),
        ({"model": "tiny", "messages": USER, "tools": ["add"]}, None, 400, "tools[0]"),
        (
            {"model": "tiny", "messages": USER, "tools": [WEATHER], "tool_choice": "sub"},
            None,
            400,
            "tool_choice",
        ),
        ({"model": "tiny", "messages": USER, "max_completion_tokens": 0}, None, 400, "max_tokens"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            None,
            400,
            "messages[0].content",
        ),
    ],
)
def test_bad_requests_get_openai_errors(base, client, body, raw, status, param):
    r = _post(base, body, raw=raw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    # ... and the server keeps serving.
    ok = client.chat.completions.create(model="tiny", messages=USER, max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_prompt_over_context_window(base, hetero, client):
    long = "word " * (hetero.context_window + 10)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": long}], max_tokens=4
        )
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):  # streaming: still an HTTP error, not an event
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": long}], max_tokens=4, stream=True
        )


def test_body_too_large_and_api_key(base, client, hetero):
    with running(hetero, model_name="tiny", max_body_bytes=1000) as small:
        r = _post(small, {"model": "tiny", "messages": [{"role": "user", "content": "x" * 2000}]})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert _post(small, {"model": "tiny", "messages": USER, "max_tokens": 2}).status_code == 200
    wrong = openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="tiny", messages=USER)
    assert httpx.get(base + "/models").status_code == 401
    assert httpx.get(base.removesuffix("/v1") + "/health").status_code == 200
    r = httpx.get(base + "/nowhere", headers=AUTH)
    assert r.status_code == 404 and "error" in r.json()
    assert client.models.list().data[0].id == "tiny"


def test_completion_refusals(base):
    for body, param in [
        ({"prompt": "x", "echo": True}, "echo"),
        ({"prompt": "x", "logprobs": 6}, "logprobs"),
        ({"prompt": ["x", "y"], "stream": True}, "prompt"),
        ({"prompt": ""}, "prompt"),
    ]:
        r = httpx.post(base + "/completions", json={"model": "tiny", **body}, headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
