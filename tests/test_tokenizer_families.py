"""Tokenizer families seen as bytes: the oracle pinned to a table, the engine held to the oracle.

The oracle (``reference.oracle_vocab``) is itself checked against the tokenizers' own decoders
here, and against a table of expected end tokens per family, so that the exactness tests built on
it rest on something other than the engine's ``Vocab``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import PROMPTS
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import (
    as_engine_text,
    gpt2_byte_table,
    member_oracle,
    oracle_vocab,
    reference_generate,
)
from reference import transformers_greedy as greedy
from tiny_models import FAMILIES, tiny_model_dir
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

from unite_integrations import UniTEEngine
from unite_integrations.engine.vocab import Vocab
from unite_integrations.errors import TokenizerError

#: Which tokens end a sequence, per family (the spec's END: EOS, generation_config, end markers).
END_TOKENS = {
    "bytelevel_bpe": {"<|endoftext|>", "<|im_end|>"},  # SmolLM2-like: both end a text
    "sentencepiece_unigram": {"</s>"},  # Llama/Mistral-like
    "sentencepiece_bpe": {"<eos>", "<end_of_turn>"},  # Gemma-like: generation_config lists both
    "wordpiece": {"[SEP]"},  # BERT-like: EOS role only
}
#: What the oracle must read from each family's decoder.
KIND = {
    "bytelevel_bpe": "bytelevel",
    "sentencepiece_unigram": "sentencepiece",
    "sentencepiece_bpe": "sentencepiece",
    "wordpiece": "wordpiece",
}
ALL = (*FAMILIES, "wordpiece")


def _oracle(family: str):
    path = tiny_model_dir(family)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    size = int(model.get_output_embeddings().weight.shape[0])
    return tok, model, oracle_vocab(tok, model.generation_config, size)


def test_gpt2_byte_table_is_the_byte_level_alphabet():
    table = gpt2_byte_table()
    assert sorted(table.values()) == list(range(256))
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    assert (table["Ġ"], table["Ċ"], table["ĉ"], table["A"]) == (32, 10, 9, 65)


@pytest.mark.parametrize("family", ALL)
def test_oracle_end_tokens_and_kind_match_the_table(family):
    tok, _, v = _oracle(family)
    assert v.kind == KIND[family]
    assert {tok.convert_ids_to_tokens(i) for i in v.end_ids} == END_TOKENS[family]


@pytest.mark.parametrize("family", ALL)
def test_oracle_bytes_agree_with_the_tokenizers_own_decoder(family):
    """Decoding [anchor, t] must give the anchor's text plus t's canonical bytes, for every token
    whose bytes are valid UTF-8; the byte pieces must cover what the family promises."""
    tok, _, v = _oracle(family)
    anchor = v.exact[b" x" if v.kind == "wordpiece" else b"x"]  # decodes to "x" at the start
    assert tok.decode([anchor]) == "x"
    checked = 0
    for t, c in enumerate(v.canon):
        if c is None:
            continue
        try:
            text = c.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if "\ufffd" in text:
            continue
        assert tok.decode([anchor, t]) == "x" + text, (t, tok.convert_ids_to_tokens(t))
        checked += 1
    assert checked > 250
    n_bytes = len(v.byte_tok)
    assert n_bytes == (256 if family != "wordpiece" else n_bytes)
    if family == "wordpiece":
        assert n_bytes < 200  # no byte fallback: most bytes cannot be spelled


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_vocab_agrees_with_the_oracle(make_engine, tiny_dirs, family):
    member = make_engine(tiny_dirs[family]).members[0]
    v = member_oracle(member)
    assert member.vocab.canon == v.canon
    assert member.vocab.end_ids == v.end_ids
    assert member.vocab.exact == v.exact
    assert member.vocab.byte_ids == [v.byte_tok.get(b, -1) for b in range(256)]
    for text in ["Hello world", " two  spaces", "中文 😀", "é\n\tx"]:
        data = text.encode()
        assert member.vocab.bytes_of(member.vocab.encode(data)) == data
        assert member.vocab.encode(data) == v.encode(data), text
    for cut in [b"\xe4\xb8", b"a\xf0\x9f", b"\x80x"]:  # partial characters: byte tokens
        assert member.vocab.encode(cut) == v.encode(cut), cut


def test_a_slow_tokenizer_is_a_tokenizer_error():
    from transformers.models.byt5.tokenization_byt5 import ByT5Tokenizer

    with pytest.raises(TokenizerError, match=r"ByT5Tokenizer is a slow .* \(tokenizer.json\)"):
        Vocab.from_tokenizer(ByT5Tokenizer(), 384)


def test_a_wordpiece_member_cannot_be_ensembled(tiny_dirs, cache_dir):
    with pytest.raises(TokenizerError, match="cannot spell") as info:
        UniTEEngine(
            [str(tiny_dirs["bytelevel_bpe"]), str(tiny_model_dir("wordpiece"))], cache_dir=cache_dir
        )
    assert "wordpiece" in str(info.value)
    message = str(info.value)
    assert "Use it alone, or pick a model with a byte-complete tokenizer." in message
    assert "neither byte-level BPE nor SentencePiece with byte fallback" in message
    assert "(e.g. b'\\t\\n\\r X^|~')" in message  # the first 8 bytes it cannot spell


def test_a_wordpiece_member_alone_equals_its_generate(cache_dir):
    engine = UniTEEngine([str(tiny_model_dir("wordpiece"))], cache_dir=cache_dir)
    for prompt in PROMPTS[:4]:
        expected, _, _ = greedy(engine.members[0], prompt, 10)
        got = engine.generate([prompt], max_new_tokens=10)[0]
        assert got.text == as_engine_text(expected), prompt


@pytest.fixture(scope="module")
def wordpiece_vocab() -> Vocab:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir("wordpiece"))
    return Vocab.from_tokenizer(tok, len(tok))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet=st.sampled_from("abcdefghinorstuwyTHEP .,!?'0123\n"), max_size=40))
def test_a_wordpiece_members_text_is_its_tokenizers_decode(wordpiece_vocab, text):
    """For any text: the member's bytes for its tokens are what the tokenizer's own decoder
    writes after a word (the middle of a text), and at the start of a text the same less the
    space before the first word; encoding those bytes gives the same ids back."""
    v = wordpiece_vocab
    tok = v.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assume(ids and tok.unk_token_id not in ids)
    anchor = tok.convert_tokens_to_ids("the")
    assert v.bytes_of(ids).decode() == tok.decode([anchor, *ids])[len("the") :]
    assert v.bytes_of(ids).decode() == " " + tok.decode(ids)
    assert v.encode(v.bytes_of(ids)) == ids


# -------------------------------------------------------------------------- padded embeddings


@pytest.fixture(scope="module")
def padded_dir(tmp_path_factory) -> Path:
    """A bytelevel model whose output embedding has 64 rows past the tokenizer, each a large
    multiple of a common token's row, so they would win every step were they ever candidates."""
    src = tiny_model_dir("bytelevel_bpe", vocab_size=512 + 64)
    dst = tmp_path_factory.mktemp("padded") / "m"
    shutil.copytree(src, dst)
    model = AutoModelForCausalLM.from_pretrained(dst)
    tok = AutoTokenizer.from_pretrained(dst)
    head = model.get_output_embeddings().weight
    assert head.shape[0] == len(tok) + 64
    with torch.no_grad():
        for n, t in enumerate(range(len(tok), head.shape[0])):
            head[t] = head[tok.convert_tokens_to_ids(["Ġthe", "e", ".", "Ġ"][n % 4])] * 8
    model.save_pretrained(dst)
    return dst


def test_padded_output_rows_are_never_chosen(padded_dir, tiny_dirs, cache_dir):
    engine = UniTEEngine([str(padded_dir)], cache_dir=cache_dir, check_invariants=True)
    member = engine.members[0]
    n_tok = len(member.tokenizer)
    assert member.vocab.size == n_tok + 64
    assert all(c is None for c in member.vocab.canon[n_tok:])
    # Unsuppressed, the padded rows win: the test would see a leak.
    ids = member.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = member.model(**ids).logits[0, -1]
    assert int(logits.argmax()) >= n_tok
    for prompt in PROMPTS[:6]:
        expected, _, n = greedy(member, prompt, 12)
        got = engine.generate([prompt], max_new_tokens=12)[0]
        assert got.text == as_engine_text(expected), prompt
        assert got.usage.output_tokens == n
    # In an ensemble too: the pair equals the reference rule (which reads padding off the files).
    pair = UniTEEngine(
        [str(padded_dir), str(tiny_dirs["sentencepiece_bpe"])],
        cache_dir=cache_dir,
        check_invariants=True,
    )
    for prompt in PROMPTS[:4]:
        expected = reference_generate(
            [m.model for m in pair.members],
            [member_oracle(m) for m in pair.members],
            [m.encode_prompt(prompt) for m in pair.members],
            [1.0, 1.0],
            k=10,
            max_new_tokens=10,
        )
        got = pair.generate([prompt], max_new_tokens=10)[0]
        assert got.text == as_engine_text(expected.text), prompt
        assert got.usage.output_tokens == len(expected.pieces)


# -------------------------------------------------------------------------- chat without template


def test_member_without_chat_template_uses_the_fallback_and_its_stop(tiny_dirs, cache_dir):
    from unite_integrations.engine.members import FALLBACK_STOP, render_fallback

    base = tiny_model_dir("sentencepiece_bpe", chat_template=False)
    engine = UniTEEngine(
        [str(tiny_dirs["bytelevel_bpe"]), str(base)], cache_dir=cache_dir, check_invariants=True
    )
    templated, plain = engine.members
    assert templated.has_template and not plain.has_template
    conversation = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = render_fallback(conversation)
    assert rendered.endswith("Assistant:") and "User: What is the capital" in rendered
    assert plain.encode_prompt(conversation) == list(
        plain.tokenizer(rendered, add_special_tokens=True)["input_ids"]
    )
    assert templated.encode_prompt(conversation) != templated.encode_prompt(rendered)
    assert FALLBACK_STOP == ("\nUser:",)
    # A chat call is the rendered text with the fallback's stop (the tiny base models never write
    # a next turn themselves, so the cut itself is only exercised by the real Gemma-3-270M).
    alone = UniTEEngine([str(base)], cache_dir=cache_dir, check_invariants=True)
    for q in CHAT_QUESTIONS:
        conversation = [{"role": "user", "content": q}]
        chat = alone.generate([conversation], max_new_tokens=24)[0]
        raw = alone.generate([render_fallback(conversation)], max_new_tokens=24, stop=["\nUser:"])
        assert (chat.text, chat.finish_reason) == (raw[0].text, raw[0].finish_reason)
        assert "\nUser:" not in chat.text


CHAT_QUESTIONS = [
    "What is the capital of France?",
    "Hello!",
    "How many legs does a spider have?",
    "What is the color of the sky?",
    "Say something.",
    "What time does the library open?",
]


def test_a_wordpiece_member_alone_counts_the_tokens_it_wrote(cache_dir):
    """Its decoder's text does not always tokenize back (``t`` ``:`` ``##ue`` writes ``t :ue``,
    which splits at the colon): usage must count the tokens it generated, not fail re-encoding
    (it once did, with a ``TokenizerError`` from the worker, for some builds of this model)."""
    engine = UniTEEngine([str(tiny_model_dir("wordpiece"))], cache_dir=cache_dir)
    tok = engine.members[0].vocab.tokenizer
    # Sampled, so that pieces glue to punctuation somewhere (greedy text happens to avoid it).
    results = engine.generate(PROMPTS, max_new_tokens=16, temperature=1.5, seed=0)
    name = engine.member_names[0]
    for r in results:
        assert r.usage.output_tokens_per_member == {name: r.usage.output_tokens}, r.text
    lossy = [r.text for r in results if tok.decode(tok(r.text)["input_ids"]) != r.text.strip()]
    assert lossy, "every output tokenizes back: the test does not reach the case it is for"
