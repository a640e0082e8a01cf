"""Three more clients against the server (tiny models): lm-evaluation-harness, instructor and
LiteLLM.

* lm-evaluation-harness runs as a subprocess, as a user runs it, on a tiny generation task
  shipped in ``tests/lm_eval_tasks`` (TriviaQA items from ``data/``), through ``local-completions``
  and ``local-chat-completions``; its logged answers equal ``engine.generate`` (greedy) on the
  same prompts, stop strings and budget. Its multiple-choice (log-likelihood) requests are refused
  with a 400 naming ``unite eval --constrained``.
* instructor: ``from_openai`` in TOOLS and JSON_SCHEMA modes returns a valid instance by
  construction (forced tool call / ``json_schema``, both grammar-constrained); JSON mode only
  gets ``json_object`` (any JSON object) plus the schema in words, so its answer is always valid
  JSON but need not fit the schema.
* LiteLLM: ``completion`` plain, streamed and with a forced tool call, with no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")


from pydantic import BaseModel, Field  # noqa: E402
from server_harness import running  # noqa: E402

from unite_integrations.chat import ChatDefaults  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "lm_eval_tasks"
KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "Hello world"}]

#: What tests/lm_eval_tasks/unite_triviaqa_mini.yaml asks for.
LM_EVAL_STOPS = ["\n", ".", ","]
LM_EVAL_MAX_TOKENS = 8


@pytest.fixture(scope="module")
def base(hetero):
    with running(
        hetero, model_name="tiny", api_key=KEY, defaults=ChatDefaults(max_json_string_length=12)
    ) as url:
        yield url


@pytest.fixture(scope="module")
def trio_base(trio):
    """lm-eval's server: the three-member ensemble, whose chat answers to the task's questions
    are not all empty (the pair's are)."""
    with running(trio, model_name="tiny", api_key=KEY) as url:
        yield url


# -- lm-evaluation-harness ------------------------------------------------------------------------


#: The body lm-eval's ``local-completions`` sends for each (context, continuation) pair of a
#: multiple-choice task: ``echo`` with ``logprobs`` and one token, the prompt as text with
#: ``tokenized_requests=False``, else as the ids of the tokenizer it was given.
def _loglikelihood_body(prompt: str | list[list[int]]) -> dict[str, Any]:
    return {
        "model": "tiny",
        "prompt": prompt,
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": True,
    }


@pytest.mark.parametrize(
    "prompt", ["Question: Which is it?\nAnswer: C", [[51, 291, 307, 510, 28, 223, 35]]]
)
def test_lm_eval_loglikelihood_request_is_refused(trio_base, prompt):
    r = httpx.post(trio_base + "/completions", json=_loglikelihood_body(prompt), headers=AUTH)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "echo" and error["code"] == "unsupported_value"
    assert error["type"] == "invalid_request_error"
    assert "unite eval --constrained" in error["message"]
    assert "log-likelihood" in error["message"]
    client = openai.OpenAI(base_url=trio_base, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="unite eval --constrained"):
        client.completions.create(**_loglikelihood_body(prompt))


def test_token_id_prompts_are_refused_by_name(trio_base):
    """lm-eval with a tokenizer and ``tokenized_requests`` (its default) sends ids."""
    for prompt in ([1, 2, 3], [[1, 2, 3]], [[1, 2], [3]]):
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 4, "stop": ["\n"], "seed": 1234}
        r = httpx.post(trio_base + "/completions", json=body, headers=AUTH)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "prompt" and "token ids" in error["message"]
        assert "tokenizer_backend=None" in error["message"]


def _lm_eval(tmp_path: Path, model: str, model_args: str, task: str, *extra: str) -> Any:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HOME": str(tmp_path / "hf"),
        "OPENAI_API_KEY": KEY,  # lm-eval's local models send it as the bearer token
    }
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        model,
        "--model_args",
        model_args,
        "--include_path",
        str(TASKS),
        "--tasks",
        task,
        "--output_path",
        str(tmp_path / "out"),
        *extra,
    ]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "endpoint", "extra"),
    [
        # batch_size 2: a list of prompts per request; num_concurrent 2: requests in parallel
        ("local-completions", "completions", ["--batch_size", "2"]),
        ("local-chat-completions", "chat/completions", ["--apply_chat_template"]),
    ],
)
def test_lm_eval_generation_matches_engine(trio, trio_base, tmp_path, model, endpoint, extra):
    check_lm_eval_generation(trio, trio_base, tmp_path, model, endpoint, *extra)


def check_lm_eval_generation(
    engine: Any, base: str, tmp_path: Path, model: str, endpoint: str, *extra: str
) -> None:
    """lm-eval's ``model`` (against ``base``'s ``endpoint``) on the shipped generation task: its
    logged answers equal ``engine.generate`` (greedy) on the same prompts, stops and budget.
    Also run by the real-pair client tests."""
    pytest.importorskip("lm_eval")
    args = (
        f"base_url={base}/{endpoint},model=tiny,tokenizer_backend=None,"
        "num_concurrent=2,max_retries=1"
    )
    run = _lm_eval(tmp_path, model, args, "unite_triviaqa_mini", "--log_samples", *extra)
    assert run.returncode == 0, run.stderr[-4000:]
    [samples] = (tmp_path / "out").glob("**/samples_unite_triviaqa_mini_*.jsonl")
    logged = sorted(
        (json.loads(line) for line in samples.read_text().splitlines()),
        key=lambda s: s["doc_id"],
    )
    docs = [json.loads(line) for line in (TASKS / "triviaqa_mini.jsonl").read_text().splitlines()]
    assert [s["doc"]["question"] for s in logged] == [d["question"] for d in docs]
    texts = [f"Question: {d['question']}\nAnswer:" for d in docs]
    chat = endpoint.startswith("chat")
    prompts: list[Any] = [[{"role": "user", "content": t}] for t in texts] if chat else texts
    for sample, prompt in zip(logged, prompts):
        sent = sample["arguments"]["gen_args_0"]["arg_0"]
        assert (json.loads(sent[0]) if chat else sent) == prompt
        assert sample["arguments"]["gen_args_0"]["arg_1"]["until"] == LM_EVAL_STOPS
    want = engine.generate(
        prompts, max_new_tokens=LM_EVAL_MAX_TOKENS, stop=LM_EVAL_STOPS, temperature=0.0
    )
    got = [s["resps"][0][0] for s in logged]
    assert got == [w.text for w in want]
    assert any(got), "every answer is empty: the comparison would prove little"
    [results] = (tmp_path / "out").glob("**/results_*.json")
    scores = json.loads(results.read_text())["results"]["unite_triviaqa_mini"]
    assert 0.0 <= scores["exact_match,strip"] <= 1.0


@pytest.mark.slow
def test_lm_eval_multiple_choice_run_fails_with_the_reason(trio_base, tiny_dirs, tmp_path):
    """A log-likelihood task needs a tokenizer in lm-eval (for context lengths): given a local
    one, it sends ``echo`` requests, and the run stops on the server's 400, which it prints."""
    pytest.importorskip("lm_eval")
    args = (
        f"base_url={trio_base}/completions,model=tiny,tokenizer_backend=huggingface,"
        f"tokenizer={tiny_dirs['sentencepiece_unigram']},max_retries=1"
    )
    run = _lm_eval(tmp_path, "local-completions", args, "unite_arc_mini")
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "unite eval --constrained" in output, output[-4000:]
    assert "400" in output


# -- instructor -----------------------------------------------------------------------------------


class Pet(BaseModel):
    """A pet."""

    name: str = Field(max_length=6)
    age: int = Field(ge=0, le=99)


class Animal(BaseModel):
    """An animal."""

    name: str = Field(max_length=6)
    age: int = Field(ge=0, le=99)
    kind: Literal["cat", "dog"]


class Note(BaseModel):
    """A note."""

    text: str = ""


ASK = [{"role": "user", "content": "A pet?"}]


def _instructor(base: str, mode_name: str) -> Any:
    instructor = pytest.importorskip("instructor")
    client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
    return instructor.from_openai(client, mode=getattr(instructor.Mode, mode_name))


@pytest.mark.parametrize(
    ("mode", "model", "max_tokens"),
    [
        ("TOOLS", Pet, 100),  # a forced tool call: the tools' text leaves room for 2 fields
        ("JSON_SCHEMA", Animal, 60),  # response_format json_schema
    ],
)
def test_instructor_structured_modes_are_valid_by_construction(base, mode, model, max_tokens):
    client = _instructor(base, mode)
    out, raw = client.chat.completions.create_with_completion(
        model="tiny",
        response_model=model,
        messages=ASK,
        max_tokens=max_tokens,
        temperature=0,
        max_retries=0,  # the first answer, no re-asking
    )
    assert isinstance(out, model)
    choice = raw.choices[0]
    if mode == "TOOLS":
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls[0].function.name == model.__name__
    else:
        assert choice.finish_reason == "stop"
        assert model.model_validate_json(choice.message.content).model_dump() == out.model_dump()


def test_instructor_json_mode_gets_valid_json(base):
    """JSON mode sends ``json_object`` and the schema in a system message: the grammar makes
    the answer a JSON object, not an instance of the schema. A model whose fields all have
    defaults validates; one with required fields validates or fails on the schema, never on the
    JSON (instructor would re-ask, ``max_retries``; the tiny models' 512-token window has no room
    for that conversation)."""
    pytest.importorskip("instructor")
    from instructor.core import InstructorRetryException
    from pydantic import ValidationError

    client = _instructor(base, "JSON")
    note, raw = client.chat.completions.create_with_completion(
        model="tiny", response_model=Note, messages=ASK, max_tokens=30, temperature=0
    )
    assert isinstance(note, Note)
    assert isinstance(json.loads(raw.choices[0].message.content), dict)
    try:
        pet = client.chat.completions.create(
            model="tiny", response_model=Pet, messages=ASK, max_tokens=30, max_retries=0
        )
    except InstructorRetryException as e:
        assert e.failed_attempts
        for attempt in e.failed_attempts:
            assert isinstance(attempt.exception, ValidationError), attempt.exception
            assert "json_invalid" not in {err["type"] for err in attempt.exception.errors()}
            content = attempt.completion.choices[0].message.content
            assert isinstance(json.loads(content), dict)
    else:
        assert isinstance(pet, Pet)


# -- LiteLLM --------------------------------------------------------------------------------------

# LiteLLM runs in a child process, as an application would hold it: its logging threads, event
# loops and cached HTTP clients outlive each call, and collected later in the test process their
# ResourceWarnings (errors here) surface inside unrelated code (inside pytest compiling a module,
# CPython 3.11 then fails the whole session). The child also watches every socket connection
# LiteLLM opens (an audit hook): the test server's only.
_LITELLM_CHILD = """
import json, os, sys
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
connections = []
sys.addaudithook(lambda event, args: connections.append(args[1]) if event == "socket.connect" else None)
import litellm
out = []
for kw in json.loads(sys.argv[1]):
    stream = kw.pop("stream", False)
    r = litellm.completion(**kw, stream=stream)
    if stream:
        out.append({"text": "".join(c.choices[0].delta.content or "" for c in r)})
        continue
    m = r.choices[0].message
    calls = [[c.function.name, c.function.arguments] for c in (m.tool_calls or [])]
    out.append({"text": m.content, "finish_reason": r.choices[0].finish_reason,
                "completion_tokens": r.usage.completion_tokens, "tool_calls": calls})
remote = [c for c in connections if not (isinstance(c, tuple) and c[0] in ("127.0.0.1", "::1"))]
print(json.dumps({"answers": out, "remote": [repr(c) for c in remote]}))
"""


def run_litellm(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``litellm.completion`` of each call (``stream``: the streamed text) in a child process:
    per call its text, finish reason, completion tokens and tool calls ([name, arguments])."""
    pytest.importorskip("litellm")
    done = subprocess.run(
        [sys.executable, "-c", _LITELLM_CHILD, json.dumps(calls)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["remote"], f"LiteLLM connected beyond the test server: {report['remote']}"
    return list(report["answers"])


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}},
            "required": ["city"],
        },
    },
}


def test_litellm_plain_and_stream_equal_engine(hetero, base):
    want = hetero.generate([USER], max_new_tokens=10)[0]
    kw: dict[str, Any] = {
        "model": "openai/tiny",
        "api_base": base,
        "api_key": KEY,
        "messages": USER,
        "max_tokens": 10,
        "temperature": 0,
    }
    plain, streamed = run_litellm([kw, {**kw, "stream": True}])
    assert plain["text"] == want.text
    assert plain["completion_tokens"] == want.usage.output_tokens
    assert streamed["text"] == want.text


def test_litellm_forced_tool_call(base):
    [answer] = run_litellm(
        [
            {
                "model": "openai/tiny",
                "api_base": base,
                "api_key": KEY,
                "messages": [{"role": "user", "content": "Weather in Paris?"}],
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "max_tokens": 100,
                "temperature": 0,
            }
        ]
    )
    assert answer["finish_reason"] == "tool_calls"
    [[name, arguments]] = answer["tool_calls"]
    assert name == "get_weather"
    assert isinstance(json.loads(arguments)["city"], str)
