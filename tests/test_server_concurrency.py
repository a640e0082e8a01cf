"""Many clients at once: every one gets exactly the answer it gets alone; a client that goes
away mid-stream stops its decoding; an engine past its queue limit answers 429 at once."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import openai
import pytest

pytest.importorskip("uvicorn")

from server_harness import running, serving

PROMPTS = ["Hello world", "The quick brown fox", "1 + 1 =", "Once upon a time"]


def _options(i: int) -> dict[str, object]:
    """Mixed options: budgets, stop strings, greedy and seeded sampling (distinct seeds)."""
    opts: dict[str, object] = {"max_tokens": 4 + i % 5}
    if i % 3 == 1:
        opts.update(temperature=0.8, top_p=0.9, seed=100 + i)
    if i % 4 == 3:
        opts["stop"] = ["e"]
    return opts


@pytest.fixture(scope="module")
def base(make_engine, tiny_dirs):
    # An engine of its own: the counters below must not see other modules' requests.
    engine = make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], top_k=4)
    with running(engine, model_name="tiny") as url:
        yield url


def _metric(base: str, name: str) -> float:
    text = httpx.get(base.removesuffix("/v1") + "/metrics").text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def test_32_concurrent_streams_get_their_sequential_answers(base):
    client = openai.OpenAI(base_url=base, api_key="none", max_retries=0)
    jobs = [
        ([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], _options(i)) for i in range(32)
    ]
    alone = [
        client.chat.completions.create(model="tiny", messages=m, **o).choices[0].message.content
        for m, o in jobs
    ]

    async def main() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=base, api_key="none", max_retries=0)

        async def one(messages: list[dict[str, str]], opts: dict[str, object]) -> str:
            stream = await aclient.chat.completions.create(
                model="tiny", messages=messages, stream=True, **opts
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        try:
            return list(await asyncio.gather(*(one(m, o) for m, o in jobs)))
        finally:
            await aclient.close()

    assert asyncio.run(main()) == alone
    assert _metric(base, "unite_requests_in_flight") == 0


def _wait_for(check, what: str, limit: float = 60.0) -> None:
    """Poll ``check`` (not a timing assertion: the limit only bounds a hung test)."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def test_disconnect_mid_stream_cancels_the_request(base):
    before = _metric(base, "unite_requests_cancelled_total")
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Tell me a long story"}],
        "max_tokens": 400,
        "min_tokens": 400,
        "stream": True,
    }
    with httpx.stream("POST", base + "/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert _metric(base, "unite_requests_in_flight") == 1
        assert _metric(base, "unite_engine_rows_in_flight") == 1
    # The client is gone: the server notices, cancels the engine request (its row is freed at
    # the next step) and counts it.
    _wait_for(lambda: _metric(base, "unite_requests_in_flight") == 0, "the stream ended")
    _wait_for(lambda: _metric(base, "unite_engine_rows_in_flight") == 0, "the row freed")
    _wait_for(
        lambda: _metric(base, "unite_requests_cancelled_total") == before + 1, "cancel counted"
    )
    # The engine is free again: a short request is answered.
    client = openai.OpenAI(base_url=base, api_key="none", max_retries=0)
    r2 = client.chat.completions.create(model="tiny", messages=body["messages"], max_tokens=2)
    assert r2.usage.completion_tokens <= 2


def test_disconnect_before_a_plain_answer_cancels_it(base):
    """A non-streaming client that gives up (its timeout) frees the row too."""
    before = _metric(base, "unite_requests_cancelled_total")
    body = {**_stream_body(480), "stream": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.3))
    _wait_for(
        lambda: _metric(base, "unite_requests_cancelled_total") == before + 1, "cancel counted"
    )
    _wait_for(lambda: _metric(base, "unite_engine_rows_in_flight") == 0, "the row freed")
    assert _metric(base, "unite_requests_in_flight") == 0


def _stream_body(tokens: int) -> dict[str, object]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Tell me a long story"}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "stream": True,
    }


def test_graceful_shutdown_finishes_in_flight_streams(make_engine, tiny_dirs):
    engine = make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], top_k=4)
    with (
        serving(engine, model_name="tiny") as (url, server),
        httpx.stream("POST", url + "/chat/completions", json=_stream_body(24), timeout=60) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        server.should_exit = True  # as SIGTERM does
        rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert '"finish_reason": "length"' in rest[-2]


def test_shutdown_past_the_grace_period_cancels_streams(make_engine, tiny_dirs):
    engine = make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], top_k=4)
    with serving(engine, model_name="tiny", graceful_timeout=1) as (url, server):
        metrics = server.config.app.state.unite.metrics
        with httpx.stream(
            "POST", url + "/chat/completions", json=_stream_body(480), timeout=60
        ) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            server.should_exit = True
            with pytest.raises(httpx.HTTPError):  # the stream is cut: no [DONE]
                for line in lines:
                    assert line != "data: [DONE]"
    _wait_for(lambda: metrics.cancelled == 1, "the cut stream counted as cancelled")


def test_past_the_queue_limit_is_429_at_once(make_engine, tiny_dirs):
    """One row decoding, one request waiting: the next gets 429 without being queued."""
    engine = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], max_batch_rows=1, max_queue=1
    )
    with running(engine, model_name="tiny") as url:
        waiting: dict[str, httpx.Response] = {}
        second = threading.Thread(
            target=lambda: waiting.update(
                r=httpx.post(
                    url + "/chat/completions",
                    json={**_stream_body(3), "stream": False},
                    timeout=120,
                )
            )
        )
        with httpx.stream("POST", url + "/chat/completions", json=_stream_body(480)) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the response
            assert next(lines).startswith("data: ")
            second.start()  # waits for the row
            _wait_for(lambda: _metric(url, "unite_engine_queue_depth") == 1, "queued")
            r = httpx.post(url + "/chat/completions", json={**_stream_body(4), "stream": False})
            assert r.status_code == 429
            error = r.json()["error"]
            assert error["code"] == "overloaded" and "overloaded" in error["message"]
            assert _metric(url, "unite_engine_queue_depth") == 1  # nothing was added
        # The first client is gone: its row goes to the waiting request, which is answered.
        second.join(120)
        assert waiting["r"].status_code == 200
        assert waiting["r"].json()["usage"]["completion_tokens"] == 3
        _wait_for(lambda: _metric(url, "unite_engine_rows_in_flight") == 0, "row freed")
        assert _metric(url, "unite_engine_queue_depth") == 0
