"""Members the size people ensemble: "auto" dtypes, quantized members, members placed by a
device map, and the fit estimate that refuses a member before any weight is read (issue 29).

What needs a GPU (bfloat16 on CUDA, bitsandbytes, several GPUs) runs in scripts/gpu_check.sh;
here the device capability is mocked where the rule depends on it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import PROMPTS, real_models_mark
from reference import as_engine_text, transformers_greedy

from unite_integrations import UniTEEngine
from unite_integrations.engine import loading
from unite_integrations.engine.config import MemberSpec
from unite_integrations.engine.fit import (
    auto_dtype,
    estimate_config,
    fit_report,
    quantized_bits,
)
from unite_integrations.errors import ConfigError, ModelLoadError

needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="torchao is not installed"
)


# -- dtype "auto" -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "stated", "bf16", "expected"),
    [
        ("cpu", "bfloat16", True, "float32"),
        ("cpu", None, True, "float32"),
        ("cuda", None, True, "bfloat16"),
        ("cuda", None, False, "float16"),
        ("cuda", "float32", True, "bfloat16"),
        ("cuda", "float16", True, "float16"),
        ("cuda", "bfloat16", True, "bfloat16"),
        ("cuda", "bfloat16", False, "float16"),
        ("mps", None, False, "float16"),
    ],
)
def test_auto_dtype_rule(device: str, stated: str | None, bf16: bool, expected: str) -> None:
    assert auto_dtype(device, stated, bf16) == expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bfloat16"), (False, "float16")])
def test_auto_dtype_on_a_mocked_gpu(
    monkeypatch: pytest.MonkeyPatch, tiny_dirs: dict[str, Path], bf16: bool, expected: str
) -> None:
    from transformers import AutoConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    config = AutoConfig.from_pretrained(str(tiny_dirs["bytelevel_bpe"]))
    assert loading.resolve_dtype(MemberSpec(source="x", device="cuda:0"), config) == expected
    assert loading.resolve_dtype(MemberSpec(source="x"), config) == "float32"  # CPU
    pinned = MemberSpec(source="x", device="cuda:0", dtype="float32")
    assert loading.resolve_dtype(pinned, config) == "float32"


def test_dtype_defaults_to_auto_and_is_float32_on_cpu(make_engine, tiny_dirs) -> None:
    assert MemberSpec(source="x").dtype == "auto"
    engine = make_engine(tiny_dirs["bytelevel_bpe"])
    assert engine.members[0].model.dtype == torch.float32


# -- the spec's new fields --------------------------------------------------------------------


def test_quantization_config_object_is_kept_as_its_json() -> None:
    from transformers import BitsAndBytesConfig

    spec = MemberSpec(source="x", quantization=BitsAndBytesConfig(load_in_4bit=True))
    assert spec.quantization is not None
    assert json.loads(spec.quantization)["quant_method"] == "bitsandbytes"
    assert quantized_bits(spec.quantization) == 4
    assert hash(spec) == hash(MemberSpec(**spec.model_dump()))  # still hashable, same key
    assert MemberSpec(source="x", quantization="int8").quantization == "int8"


@pytest.mark.parametrize("bad", ["int3", "{}", '{"bits": 4}'])
def test_unknown_quantization_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="quantization"):
        MemberSpec(source="x", quantization=bad)


def test_device_map_forms_and_gpus_reserved() -> None:
    spec = MemberSpec(source="x", device_map={"model": 1, "lm_head": "cuda:0"})
    assert spec.device_map == (("model", 1), ("lm_head", "cuda:0"))
    assert spec.placement_map == {"model": 1, "lm_head": "cuda:0"}
    assert spec.gpus == 2.0  # GPUs 0 and 1 of the actor
    assert MemberSpec(source="x", device="auto").placement_map == "auto"
    assert MemberSpec(source="x", device="cuda:0").gpus == 1.0
    assert MemberSpec(source="x").gpus == 0.0
    assert MemberSpec(source="x", device="cuda", num_gpus=0.5).gpus == 0.5
    with pytest.raises(ConfigError, match="device_map"):
        MemberSpec(source="x", device_map="everywhere")
    with pytest.raises(ConfigError, match="device_map"):
        MemberSpec(source="x", device="cuda:0", device_map="auto")


# -- quantized members ------------------------------------------------------------------------


@needs_torchao
def test_int8_member_decodes_as_its_own_generate(tiny_dirs, cache_dir) -> None:
    spec = MemberSpec(source=str(tiny_dirs["bytelevel_bpe"]), quantization="int8")
    with UniTEEngine([spec], top_k=5, cache_dir=cache_dir, check_invariants=True) as engine:
        member = engine.members[0]
        linear = member.model.model.layers[0].mlp.down_proj.weight
        assert "Int8" in type(linear).__name__  # the layers are quantized, not float
        for prompt in PROMPTS[:6]:
            expected, stopped, n = transformers_greedy(member, prompt, 12)
            result = engine.generate([prompt], max_new_tokens=12)[0]
            assert result.text == as_engine_text(expected), prompt
            assert result.finish_reason == ("stop" if stopped else "length")
            assert result.usage.output_tokens == n


def test_missing_backend_is_a_typed_error(
    monkeypatch: pytest.MonkeyPatch, tiny_dirs: dict[str, Path]
) -> None:
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao now fails
    spec = MemberSpec(source=str(tiny_dirs["bytelevel_bpe"]), quantization="int8")
    with pytest.raises(ModelLoadError, match="pip install torchao"):
        loading.load_member(spec)


def test_missing_backend_of_a_given_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    from transformers import BitsAndBytesConfig

    spec = MemberSpec(source="x", quantization=BitsAndBytesConfig(load_in_8bit=True))
    with pytest.raises(ModelLoadError, match="pip install bitsandbytes"):
        loading.quantization_config(spec, "cuda", "bfloat16")


def test_int4_on_cpu_names_the_field_and_the_fix(tiny_dirs: dict[str, Path]) -> None:
    spec = MemberSpec(source=str(tiny_dirs["bytelevel_bpe"]), quantization="int4")
    with pytest.raises(ModelLoadError, match=r"quantization='int4'.*Fix: quantization='int8'"):
        loading.load_member(spec)


# -- a member placed by a device map ----------------------------------------------------------


def test_explicit_device_map_answers_as_the_plain_member(
    monkeypatch: pytest.MonkeyPatch, make_engine, tiny_dirs, cache_dir
) -> None:
    from transformers import AutoModelForCausalLM

    source = str(tiny_dirs["bytelevel_bpe"])
    layers = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm"]
    placement = {name: "cpu" for name in [*layers, "model.rotary_emb", "lm_head"]}
    plain = make_engine(source)
    seen: list[Any] = []
    load = AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("device_map"))
        return load(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    spec = MemberSpec(source=source, device_map=placement)
    with UniTEEngine([spec], top_k=5, cache_dir=cache_dir, check_invariants=True) as mapped:
        assert seen == [placement]  # accelerate placed it, layer by layer
        for prompt in PROMPTS[:6]:
            a = plain.generate([prompt], max_new_tokens=12)[0]
            b = mapped.generate([prompt], max_new_tokens=12)[0]
            assert (b.text, b.finish_reason) == (a.text, a.finish_reason), prompt


# -- the fit estimate -------------------------------------------------------------------------


def _measured(model: Any, tokens: int) -> tuple[int, int]:
    """(bytes of the loaded weights and buffers, bytes of a KV cache holding ``tokens``)."""
    from transformers import DynamicCache

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    cache = DynamicCache(config=model.config)
    ids = torch.randint(5, 100, (2, tokens // 2))
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    kv = sum(t.numel() * t.element_size() for la in cache.layers for t in (la.keys, la.values))
    return weights, kv


def _assert_close(estimate: Any, model: Any, tokens: int = 200) -> None:
    weights, kv = _measured(model, tokens)
    assert abs(estimate.weights_bytes - weights) <= 0.2 * weights
    assert abs(estimate.kv_bytes_per_1k * tokens / 1000 - kv) <= 0.2 * kv
    total = estimate.weights_bytes + estimate.kv_bytes_per_1k * tokens / 1000
    assert abs(total - (weights + kv)) <= 0.2 * (weights + kv)


@pytest.mark.parametrize("family", ["bytelevel_bpe", "sentencepiece_bpe"])
def test_estimate_within_20_percent_of_the_tiny_models(make_engine, tiny_dirs, family) -> None:
    spec = MemberSpec(source=str(tiny_dirs[family]))
    estimate = loading.member_estimate(spec)
    assert estimate.dtype == "float32" and estimate.devices == ("cpu",)
    _assert_close(estimate, make_engine(tiny_dirs[family]).members[0].model)


def test_estimate_of_quantized_and_half_members_shrinks() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    )
    bf16 = estimate_config(config, dtype="bfloat16")
    assert 7.9e9 < bf16.params < 8.1e9  # Llama-3-8B
    assert 15.5 * 2**30 > bf16.weights_bytes > 14.5 * 2**30
    assert bf16.kv_bytes_per_1k == 2 * 32 * 8 * 128 * 2 * 1000
    int8 = estimate_config(config, dtype="bfloat16", quantization="int8")
    int4 = estimate_config(config, dtype="bfloat16", quantization="int4")
    assert int4.weights_bytes < int8.weights_bytes < 0.6 * bf16.weights_bytes
    assert int8.kv_bytes_per_1k == bf16.kv_bytes_per_1k  # the cache stays in the dtype


def test_a_member_that_cannot_fit_is_refused_before_loading(
    monkeypatch: pytest.MonkeyPatch, tiny_dirs: dict[str, Path]
) -> None:
    from transformers import AutoModelForCausalLM

    def no_weights(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("weights were read before the fit check refused the member")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    monkeypatch.setattr("unite_integrations.engine.fit.free_memory", lambda device: 100_000)
    spec = MemberSpec(source=str(tiny_dirs["bytelevel_bpe"]))
    with pytest.raises(ModelLoadError, match=r"free there\. Fix: a smaller dtype") as err:
        loading.load_member(spec)
    assert "cpu" in str(err.value) and "quantization='int8'" in str(err.value)
    monkeypatch.setenv("UNITE_FIT_CHECK", "0")  # the escape hatch skips the check
    with pytest.raises(ModelLoadError, match="weights were read"):
        loading.load_member(spec)


def test_estimate_fit_report_against_a_budget(tiny_dirs: dict[str, Path]) -> None:
    sources = [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]
    report = loading.estimate_fit(sources, free={"cpu": 10 * 2**30})
    assert report.ok and len(report.members) == 2
    assert len(report.devices) == 1 and report.devices[0].members == tuple(
        m.name for m in report.members
    )
    text = str(report)
    assert "fits" in text and "KV/1k tok" in text and report.members[0].name in text
    tight = fit_report(report.members, free={"cpu": report.members[0].need_bytes})
    assert not tight.ok and "DOES NOT FIT" in str(tight)
    assert tight.refusal() is not None and report.refusal() is None


@real_models_mark
@pytest.mark.real
def test_estimate_within_20_percent_of_the_real_pair(make_engine, cache_dir) -> None:
    names = ["smollm2-135m-instruct", "gemma-3-270m"]
    engine = make_engine(*names)
    for name, member in zip(names, engine.members):
        estimate = loading.member_estimate(MemberSpec(source=name), cache_dir)
        _assert_close(estimate, member.model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: it would run")
def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path: Path) -> None:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [str(script), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout
    assert not out.exists()


def test_model_card_states_each_members_dtype(hetero) -> None:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from unite_integrations.server.app import create_app

    with TestClient(create_app(hetero)) as client:
        card = client.get("/v1/models").json()["data"][0]
    assert card["unite"]["dtypes"] == ["float32", "float32"]
    assert len(card["unite"]["dtypes"]) == len(card["unite"]["members"])


def test_dtype_is_stated_at_load(caplog: pytest.LogCaptureFixture, tiny_dirs) -> None:
    spec = MemberSpec(source=str(tiny_dirs["bytelevel_bpe"]), name="tiny")
    with caplog.at_level("INFO", logger="unite_integrations"):
        loading.load_member(spec)
    assert "member 'tiny' loaded: dtype float32 on cpu" in caplog.text


def test_device_auto_without_a_gpu_loads_on_the_cpu(tiny_dirs) -> None:
    source = str(tiny_dirs["bytelevel_bpe"])
    spread, _ = loading.load_member(MemberSpec(source=source, device="auto"))
    plain, _ = loading.load_member(MemberSpec(source=source))
    assert {p.device.type for p in spread.parameters()} == {"cpu"}
    assert loading.union_device(MemberSpec(source=source, device="auto"), spread).type == "cpu"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(spread(ids).logits, plain(ids).logits)
