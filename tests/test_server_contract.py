"""The chat core's contract (``test_chat_contract``) with the OpenAI-compatible server as a third
front end: every contract test runs here against ``ServerDriver``, which speaks HTTP to an
in-process server (raw ``httpx``, so the wire format is what is tested) and turns its answers and
OpenAI error bodies back into the contract's neutral answers and typed errors, and against
``ResponsesDriver``, the same server through its Responses API (``/v1/responses``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

pytest.importorskip("uvicorn")

import test_chat_contract as contract
from server_harness import running
from test_chat_contract import *  # noqa: F403  (the contract's tests, collected here)
from test_chat_contract import DEFAULTS, Answer, Driver, tiny_members

from unite_integrations.chat import ChatDefaults
from unite_integrations.engine.config import ensemble_config
from unite_integrations.engine.engine import UniTEEngine
from unite_integrations.engine.registry import get_engine
from unite_integrations.errors import ConfigError, ContextWindowError, InputError, UniteError

#: OpenAI error codes -> the typed errors the contract expects (the server's mapping, reversed).
_ERRORS: dict[str, type[UniteError]] = {
    "invalid_input": InputError,
    "invalid_value": ConfigError,
    "unsupported_value": ConfigError,
    "context_length_exceeded": ContextWindowError,
}
_SERVERS = ExitStack()


class ServerError(Exception):
    """An HTTP error without a typed counterpart (fails any ``pytest.raises(UniteError)``)."""


def _raise(status: int, body: bytes) -> None:
    error = json.loads(body)["error"]
    kind = _ERRORS.get(error.get("code") or "")
    if kind is None:
        raise ServerError(f"{status}: {error}")
    raise kind(error["message"])


class ServerDriver(Driver):
    """The server, over HTTP: a call's neutral options become the request body's fields."""

    name = "server"
    path = "/chat/completions"  # the endpoint invoke, ainvoke and astream post to
    takes_unknown_options = True  # any field can be sent; OpenAI's unsupported ones are refused

    def __init__(self, members: list[Any], **defaults: Any) -> None:
        stop = defaults.pop("stop", None)
        self._engine = get_engine(ensemble_config(members, top_k=5))  # ConfigError when bad
        options = ChatDefaults(**defaults, stop=() if stop is None else tuple(stop))
        # create_app checks the defaults (ConfigError) before anything is served.
        self.url = _SERVERS.enter_context(running(self._engine, defaults=options))

    @property
    def engine(self) -> UniTEEngine:
        return self._engine

    @staticmethod
    def body(messages: list[tuple[str, str]], call: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": [{"role": r, "content": t} for r, t in messages]}
        choice = call.pop("tool_choice", None)
        if choice is not None:
            known = ("auto", "none", "required")
            body["tool_choice"] = (
                choice if choice in known else {"type": "function", "function": {"name": choice}}
            )
        return {**body, **call}

    @staticmethod
    def answer(data: dict[str, Any]) -> Answer:
        choice = data["choices"][0]
        calls = choice["message"].get("tool_calls") or []
        u = data["usage"]
        return Answer(
            choice["message"]["content"] or "",
            [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls],
            [c["id"] for c in calls],
            (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]),
            choice["finish_reason"],
        )

    def invoke(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        r = httpx.post(self.url + self.path, json=self.body(messages, call), timeout=300)
        if r.status_code != 200:
            _raise(r.status_code, r.content)
        return self.answer(r.json())

    def open_stream(self, messages: list[tuple[str, str]], **call: Any) -> Iterator[Any]:
        body = {
            **self.body(messages, call),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        stream = self._events(body)
        return _Primed(stream)

    def _events(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with (
            httpx.Client(timeout=300) as client,
            client.stream("POST", self.url + "/chat/completions", json=body) as r,
        ):
            if r.status_code != 200:
                _raise(r.status_code, r.read())
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    event = json.loads(line[6:])
                    if "error" in event:
                        _raise(500, line[6:].encode())
                    yield event

    def stream(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        events = list(self.open_stream(messages, **call))
        deltas, calls, finish = [], {}, None
        for e in events:
            for c in e["choices"]:
                delta = c["delta"]
                if delta.get("content"):
                    deltas.append(delta["content"])
                for t in delta.get("tool_calls") or []:
                    entry = calls.setdefault(t["index"], {"id": "", "name": "", "arguments": ""})
                    entry["id"] = t.get("id") or entry["id"]
                    fn = t.get("function") or {}
                    entry["name"] += fn.get("name") or ""
                    entry["arguments"] += fn.get("arguments") or ""
                finish = c["finish_reason"] or finish
        u = events[-1]["usage"]
        ordered = [calls[i] for i in sorted(calls)]
        answer = Answer(
            "".join(deltas),
            [(c["name"], json.loads(c["arguments"])) for c in ordered],
            [c["id"] for c in ordered],
            (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]),
            finish or "",
        )
        answer.deltas = deltas
        answer.call_chunks = [
            (i, c["id"], c["name"], json.loads(c["arguments"])) for i, c in enumerate(ordered)
        ]
        return answer

    async def ainvoke(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        async with httpx.AsyncClient(timeout=300) as client:
            r = await client.post(self.url + self.path, json=self.body(messages, call))
        if r.status_code != 200:
            _raise(r.status_code, r.content)
        return self.answer(r.json())

    async def astream(self, messages: list[tuple[str, str]], **call: Any) -> AsyncIterator[Any]:
        body = {**self.body(messages, call), "stream": True}
        async with (
            httpx.AsyncClient(timeout=300) as client,
            client.stream("POST", self.url + self.path, json=body) as r,
        ):
            if r.status_code != 200:
                _raise(r.status_code, await r.aread())
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    yield json.loads(line[6:])


class ResponsesDriver(ServerDriver):
    """The same server through OpenAI's Responses API (``/v1/responses``): the conversation as
    ``input`` message items, function tools and tool choice in the Responses shape, the budget as
    ``max_output_tokens``; the answer read from the ``response`` object's output items, and a
    stream from its typed events (text deltas; each call as its ``output_item.done``)."""

    name = "responses"
    path = "/responses"

    @staticmethod
    def body(messages: list[tuple[str, str]], call: dict[str, Any]) -> dict[str, Any]:
        call = dict(call)
        body: dict[str, Any] = {"input": [{"role": r, "content": t} for r, t in messages]}
        tools = call.pop("tools", None)
        if tools is not None:  # the chat shape's function, flattened (malformed ones as they are)
            body["tools"] = [
                {"type": "function", **t["function"]}
                if isinstance(t, dict) and isinstance(t.get("function"), dict)
                else t
                for t in tools
            ]
        choice = call.pop("tool_choice", None)
        if choice is not None:
            known = ("auto", "none", "required")
            body["tool_choice"] = (
                choice if choice in known else {"type": "function", "name": choice}
            )
        if "max_tokens" in call:
            body["max_output_tokens"] = call.pop("max_tokens")
        return {**body, **call}

    @staticmethod
    def answer(data: dict[str, Any]) -> Answer:
        output = data["output"]
        calls = [o for o in output if o["type"] == "function_call"]
        text = [p["text"] for o in output if o["type"] == "message" for p in o["content"]]
        u = data["usage"]
        incomplete = data["status"] == "incomplete"  # the budget ran out
        finish = "tool_calls" if calls else ("length" if incomplete else "stop")
        return Answer(
            "".join(text),
            [(c["name"], json.loads(c["arguments"])) for c in calls],
            [c["call_id"] for c in calls],
            (u["input_tokens"], u["output_tokens"], u["total_tokens"]),
            finish,
        )

    def open_stream(self, messages: list[tuple[str, str]], **call: Any) -> Iterator[Any]:
        return _Primed(self._events({**self.body(messages, call), "stream": True}))

    def _events(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with (
            httpx.Client(timeout=300) as client,
            client.stream("POST", self.url + "/responses", json=body) as r,
        ):
            if r.status_code != 200:
                _raise(r.status_code, r.read())
            for line in r.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event["type"] == "error":
                        _raise(500, json.dumps({"error": event}).encode())
                    yield event

    def stream(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        events = list(self.open_stream(messages, **call))
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        answer = self.answer(events[-1]["response"])
        answer.deltas = [
            e["delta"] for e in events if e["type"] == "response.output_text.delta" and e["delta"]
        ]
        calls = [
            e["item"]
            for e in events
            if e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"
        ]
        answer.call_chunks = [
            (i, c["call_id"], c["name"], json.loads(c["arguments"])) for i, c in enumerate(calls)
        ]
        return answer


class _Primed:
    """A stream whose request is sent (and errors raised) at creation, like the core's; closing
    or dropping it closes the connection, which the server takes as a disconnect."""

    def __init__(self, events: Iterator[dict[str, Any]]) -> None:
        self._events = events
        self._first = next(events)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        first, self._first = self._first, None
        if first is not None:
            yield first
        yield from self._events

    def close(self) -> None:
        self._events.close()  # type: ignore[attr-defined]

    def __del__(self) -> None:
        self.close()


@pytest.fixture(scope="module", autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    _SERVERS.close()


@pytest.fixture(params=[ServerDriver, ResponsesDriver], ids=lambda d: d.name)
def front(request: pytest.FixtureRequest) -> Driver:
    driver: Driver = request.param(tiny_members(), **DEFAULTS)
    return driver


# The core's own unit tests need no second run here.
for _name in [n for n in dir(contract) if n.startswith("test_")]:
    _fn = getattr(contract, _name)
    if "front" not in _fn.__code__.co_varnames[: _fn.__code__.co_argcount]:
        del globals()[_name]
