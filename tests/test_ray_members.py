"""Members in Ray actors decode exactly like members in process; only O(rows x k) numbers cross.

A local Ray instance (2 CPUs, no dashboard) is started for this module and shut down after it.
"""

from __future__ import annotations

import pytest
from conftest import real_models_mark

from unite_integrations import UniTEEngine
from unite_integrations.engine.constraints import Constraint
from unite_integrations.errors import MemberUnavailableError

ray = pytest.importorskip("ray")

PROMPTS = [
    "Hello world",
    "The capital of France is",
    "中文测试：你好，世界",
    "emoji 😀 and 👨‍👩‍👧 family",
    "def add(a, b):\n    return a + b\n",
]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pair(ray_session, tiny_dirs, cache_dir):
    """(in process, through actors) over the same heterogeneous tiny pair."""
    sources = [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]
    kw = {"top_k": 5, "cache_dir": cache_dir, "check_invariants": True}
    local = UniTEEngine(sources, **kw)
    remote = UniTEEngine(sources, backend="ray", **kw)
    yield local, remote
    remote.close()
    local.close()


def _same(a, b):
    assert [r.text for r in a] == [r.text for r in b]
    assert [r.finish_reason for r in a] == [r.finish_reason for r in b]
    # Token for token the same choices; the probabilities to float rounding (an actor's torch
    # may run another number of threads than the driver's, which reorders the sums).
    for pa, pb in zip([r.provenance for r in a], [r.provenance for r in b]):
        assert [(t.text, t.proposers, t.winner) for t in pa.tokens] == [
            (t.text, t.proposers, t.winner) for t in pb.tokens
        ]
        for ta, tb in zip(pa.tokens, pb.tokens):
            assert ta.probs == pytest.approx(tb.probs, abs=1e-5)
        assert pa.summary() == pb.summary()


def test_greedy_batch_equals_in_process(pair):
    local, remote = pair
    assert set(remote.ray_actors) == {0, 1} and not local.ray_actors
    _same(local.generate(PROMPTS, max_new_tokens=12), remote.generate(PROMPTS, max_new_tokens=12))


def test_sampled_and_min_tokens_equal_in_process(pair):
    local, remote = pair
    opts = {"max_new_tokens": 10, "temperature": 0.9, "top_p": 0.9, "seed": 7, "min_new_tokens": 4}
    _same(local.generate(PROMPTS[:3], **opts), remote.generate(PROMPTS[:3], **opts))


def test_gated_equals_in_process(pair):
    """Gating through actors: lazy prefill (one id per row at joining) and catch-up forwards of
    the rows that vote, as in process."""
    local, remote = pair
    for gate in (0.0, 0.3):
        _same(
            local.generate(PROMPTS, max_new_tokens=12, gate=gate),
            remote.generate(PROMPTS, max_new_tokens=12, gate=gate),
        )


def test_stream_equals_in_process(pair):
    local, remote = pair
    chunks = list(remote.stream("Once upon a time", max_new_tokens=12))
    [expected] = local.generate(["Once upon a time"], max_new_tokens=12)
    assert "".join(c.text for c in chunks) == expected.text
    assert chunks[-1].finish_reason == expected.finish_reason


def test_constrained_equals_in_process(pair):
    local, remote = pair
    c = Constraint.json_schema(PERSON, max_string_length=8)
    _same(
        local.generate(["A person:", "名字"], constraint=c, max_new_tokens=60),
        remote.generate(["A person:", "名字"], constraint=c, max_new_tokens=60),
    )


def test_bytes_per_step_bounded_independently_of_vocabulary(pair):
    _, remote = pair
    n, k, window = 2, remote.config.top_k, remote.config.retokenize_window
    rows = len(PROMPTS)
    before_bytes, before_steps = remote.wire["bytes"], remote.stats["steps"]
    remote.generate(PROMPTS, max_new_tokens=12)
    steps = remote.stats["steps"] - before_steps
    moved = remote.wire["bytes"] - before_bytes
    prompt_ids = sum(len(m.encode_prompt(p)) for m in remote.members for p in PROMPTS)
    c = n * k
    # per member and row: top-k values+columns, union columns sent and logits back, fed-back ids
    per_step = n * rows * (12 * k + 12 * c + 8 * (window + 1) + 16)
    assert steps > 0 and moved > 0
    assert moved - 8 * prompt_ids <= steps * per_step
    vocab_row = 4 * min(m.vocab.size for m in remote.members)
    assert per_step / rows < vocab_row  # less than one vocabulary row per row and step


def test_killed_actor_fails_in_flight_requests_and_recovers(pair):
    local, remote = pair
    stream = remote.stream("Once upon a time", max_new_tokens=200, min_new_tokens=200)
    next(stream)
    ray.kill(remote.ray_actors[1], no_restart=False)
    with pytest.raises(MemberUnavailableError, match=remote.member_names[1]):
        for _ in stream:
            pass
    # Ray restarts the actor; the next request is served, and exactly as in process.
    _same(
        local.generate(PROMPTS[:2], max_new_tokens=8),
        remote.generate(PROMPTS[:2], max_new_tokens=8),
    )


def test_import_stays_ray_free():
    import subprocess
    import sys

    code = "import sys, unite_integrations; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_adapters_take_members_placed_on_ray(pair, tiny_dirs, cache_dir):
    from unite_integrations import MemberSpec
    from unite_integrations.langchain import UniTEChatModel
    from unite_integrations.llama_index import UniTELLM

    local, _ = pair
    sources = [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]
    specs = [MemberSpec(source=s, placement="ray") for s in sources]
    chat = UniTEChatModel(members=specs, top_k=5, max_tokens=8, cache_dir=str(cache_dir))
    llm = UniTELLM(members=specs, top_k=5, max_tokens=8, cache_dir=str(cache_dir))
    conversation = [{"role": "user", "content": "Hello"}]
    [expected] = local.generate([conversation], max_new_tokens=8)
    try:
        assert chat.invoke("Hello").content == expected.text
        in_process = UniTELLM(members=sources, top_k=5, max_tokens=8, cache_dir=str(cache_dir))
        assert llm.complete("Hello").text == in_process.complete("Hello").text
        assert chat.engine is llm.engine and set(chat.engine.ray_actors) == {0, 1}
    finally:
        chat.engine.close()


def test_cli_generate_with_ray_address(pair, tiny_dirs, capsys):
    from unite_integrations.cli import main

    local, _ = pair
    sources = [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]
    args = ["generate", "Hello world", "-k", "5", "-n", "8", "--ray-address", "local"]
    for s in sources:
        args += ["--member", s]
    assert main(args) == 0
    [expected] = local.generate(["Hello world"], max_new_tokens=8)
    assert capsys.readouterr().out == expected.text + "\n"


@pytest.mark.real
@real_models_mark
def test_real_pair_through_actors_equals_in_process(ray_session):
    members = ["smollm2-135m-instruct", "gemma-3-270m"]
    prompts = ["The capital of France is", [{"role": "user", "content": "Name a fruit."}]]
    local = UniTEEngine(members, max_batch_rows=4)
    remote = UniTEEngine(members, backend="ray")
    try:
        _same(local.generate(prompts, max_new_tokens=8), remote.generate(prompts, max_new_tokens=8))
    finally:
        remote.close()
        local.close()


def test_member_engine_of_a_remote_member(pair):
    local, remote = pair
    view = remote.member_engine(1)
    assert set(view.ray_actors) == {0}
    want = local.member_engine(1).generate(PROMPTS[:2], max_new_tokens=6)
    _same(want, view.generate(PROMPTS[:2], max_new_tokens=6))


@pytest.mark.parametrize(
    "field",
    [
        {"placement": "remote"},
        {"num_gpus": -1.0},
        {"num_gpus": True},
        {"resources": {"node_a": True}},
        {"resources": {"node_a": -1}},
        {"resources": 5},
    ],
)
def test_bad_ray_fields_are_config_errors(field):
    from unite_integrations import MemberSpec
    from unite_integrations.errors import ConfigError

    with pytest.raises(ConfigError, match=next(iter(field))):
        MemberSpec(source="x", **field)


def test_ray_config_round_trips_through_json():
    from unite_integrations import MemberSpec
    from unite_integrations.engine.config import EnsembleConfig

    spec = MemberSpec(source="x", placement="ray", num_gpus=0.5, resources={"node_b": 1})
    cfg = EnsembleConfig(members=(spec,), backend="ray", ray_address="auto")
    assert EnsembleConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert spec.resources == (("node_b", 1.0),)
