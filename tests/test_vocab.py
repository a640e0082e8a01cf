"""Property tests of the byte view of vocabularies: canonical bytes, exact encoding, cross maps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import FAMILIES, tiny_model_dir
from transformers import AutoTokenizer

from unite_integrations.engine.vocab import _ANCHORS, Vocab, build_cross_map
from unite_integrations.errors import TokenizerError

_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class _Vocabs(dict[str, Vocab]):
    def __repr__(self) -> str:  # hypothesis prints arguments of failing examples
        return "<vocabs>"


@pytest.fixture(scope="module")
def vocabs(tiny_dirs) -> dict[str, Vocab]:
    out = _Vocabs()
    for family in FAMILIES:
        tok = AutoTokenizer.from_pretrained(tiny_dirs[family])
        out[family] = Vocab.from_tokenizer(tok, len(tok))
    return out


@pytest.fixture(scope="module")
def wordpiece() -> Vocab:
    """The tiny BERT-like member's vocabulary (no byte fallback; not one of ``FAMILIES``)."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir("wordpiece"))
    return Vocab.from_tokenizer(tok, len(tok))


@pytest.mark.parametrize("family", FAMILIES)
def test_canonical_bytes_match_in_context_decoding(vocabs, family):
    """A token's bytes are what it adds to a text: decode(anchor + id) minus decode(anchor)."""
    v = vocabs[family]
    tok = v.tokenizer
    anchor = tok.encode("Hello", add_special_tokens=False)
    base = tok.decode(anchor)
    checked = 0
    for t, b in enumerate(v.canon):
        if b is None:
            continue
        text = tok.decode([*anchor, t])
        try:
            expected = b.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a partial character: decode() cannot show it, bytes can
        assert text == base + expected, (t, tok.convert_ids_to_tokens(t))
        checked += 1
    assert checked > 200


@pytest.mark.parametrize("family", FAMILIES)
def test_end_tokens_are_not_candidates_and_specials_have_no_bytes(vocabs, family):
    v = vocabs[family]
    assert v.end_ids and all(v.canon[t] is None for t in v.end_ids)
    for t in v.tokenizer.all_special_ids:
        assert v.canon[t] is None
    assert v.byte_complete


@pytest.mark.parametrize("family", FAMILIES)
@_SETTINGS
@given(text=st.text(min_size=1, max_size=40))
def test_encode_round_trips_any_unicode(vocabs, family, text):
    v = vocabs[family]
    ids = v.encode(text.encode())
    assert v.bytes_of(ids) == text.encode()
    assert all(v.canon[i] is not None for i in ids)


@pytest.mark.parametrize("family", FAMILIES)
@_SETTINGS
@given(data=st.binary(min_size=1, max_size=24))
def test_encode_round_trips_any_bytes(vocabs, family, data):
    v = vocabs[family]
    assert v.bytes_of(v.encode(data)) == data


@pytest.mark.parametrize("family", FAMILIES)
@_SETTINGS
@given(text=st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30))
def test_in_context_encoding_is_the_tokenizers_own_after_a_clean_anchor(vocabs, family, text):
    """For valid text, encode() is the tokenizer's own ids after the first anchor whose tokens
    end exactly where the anchor's bytes end (so the anchor cannot merge into the text)."""
    v = vocabs[family]
    for anchor in _ANCHORS:
        full = v.tokenizer.encode(anchor + text, add_special_tokens=False)
        for cut in range(len(full) + 1):
            if len(v.bytes_of(full[:cut])) >= len(anchor.encode()):
                break
        if v.bytes_of(full[:cut]) == anchor.encode() and v.bytes_of(full[cut:]) == text.encode():
            assert v.encode(text.encode()) == full[cut:]
            return
    assert v.bytes_of(v.encode(text.encode())) == text.encode()


@pytest.mark.parametrize("src", FAMILIES)
@pytest.mark.parametrize("dst", FAMILIES)
def test_cross_map_reads_the_string_or_its_first_sub_token(vocabs, src, dst, tmp_path):
    s, d = vocabs[src], vocabs[dst]
    m = build_cross_map(s, d, tmp_path)
    again = build_cross_map(s, d, tmp_path)  # from the disk cache
    assert again.column.equal(m.column) and again.exact.equal(m.exact)
    assert list(tmp_path.joinpath("maps").iterdir())
    assert m.exact.dtype == again.exact.dtype == torch.bool
    for t in s.end_ids:  # every end token of src is dst's END column, exactly
        assert (int(m.column[t]), bool(m.exact[t])) == (d.size, True)
    for t, b in enumerate(s.canon):
        if b is None:
            continue
        target = d.canon[int(m.column[t])]
        assert target is not None and b.startswith(target)
        assert bool(m.exact[t]) == (target == b)
        if not m.exact[t]:
            assert int(m.column[t]) == d.encode(b)[0]


@pytest.fixture(scope="module")
def cross_maps(vocabs):
    return {
        (s, d): build_cross_map(vocabs[s], vocabs[d]) for s in FAMILIES for d in FAMILIES if s != d
    }


@_SETTINGS
@given(text=st.text(min_size=1, max_size=20))
def test_cross_maps_round_trip_random_text(vocabs, cross_maps, text):
    """Text spelled in one vocabulary maps, token by token through ``build_cross_map``, onto the
    same string or its first sub-token in every other one, which spells it back exactly."""
    for src in FAMILIES:
        s = vocabs[src]
        ids = s.encode(text.encode())
        assert s.bytes_of(ids) == text.encode()
        for dst in FAMILIES:
            if dst == src:
                continue
            d, m = vocabs[dst], cross_maps[src, dst]
            for t in ids:
                b, col = s.canon[t], int(m.column[t])
                assert b is not None and d.canon[col] is not None
                assert b.startswith(d.canon[col]) and bool(m.exact[t]) == (d.canon[col] == b)
                assert d.encode(b)[0] == col or bool(m.exact[t])
                assert d.bytes_of(d.encode(b)) == b


@pytest.mark.parametrize("cleanup", [True, False])
def test_wordpiece_piece_text_is_what_the_tokenizers_decoder_writes_after_a_word(cleanup):
    """Each WordPiece piece's mid-text bytes against ``tokenizers``' own WordPiece decoder, with
    and without its per-token cleanup (spaces before punctuation and contractions)."""
    from tokenizers import decoders

    from unite_integrations.engine.vocab import _wordpiece_text

    decoder = decoders.WordPiece(prefix="##", cleanup=cleanup)
    pieces = ["x", "##x", "##ab", ".", "##.", "?", "!", ",", "'", "' ", "n't", "'m", "'s"]
    pieces += ["'ve", "'re", "do not", "##do not", "a ' b", "word", "#", "##", "###x"]
    for piece in pieces:
        assert _wordpiece_text(piece, "##", cleanup) == decoder.decode(["w", piece])[1:], piece


# Hand-made vocabularies with decoders the tiny families do not use: a space character other than
# '▁' (through Metaspace or Replace), byte fallback or not, WordPiece with another prefix. Each
# piece's bytes are checked against the tokenizer's own decoder after an anchor word.
_PIECES = ["<unk>", "<s>", "</s>", "<|im_end|>", "x", "_y", "y_", "__", "_", "ab", "é", "中"]
_PIECES += ["<0x41>", "<0x0A>", "<0x20>", "<0xE4>", "##c", "_##d", "%%e", "▁f", "Ġg", ".", "n't"]
_PIECES += ["##", "%%"]  # empty once their prefix goes: never a candidate


def _hand_made(decoder, specials=("<unk>", "<s>", "</s>", "<|im_end|>"), eos="</s>"):
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({p: i for i, p in enumerate(_PIECES)}, unk_token="<unk>"))
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    tok.add_tokens([AddedToken("<tool>", special=False)])  # an added token that is text
    tok.decoder = decoder(decoders)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token=eos)


_DECODERS = {
    "metaspace_underscore": lambda d: d.Metaspace(replacement="_", prepend_scheme="always"),
    "replace_underscore_bytes": lambda d: d.Sequence(
        [d.Replace("_", " "), d.ByteFallback(), d.Fuse(), d.Strip(" ", 1, 0)]
    ),
    "replace_underscore_no_bytes": lambda d: d.Sequence([d.Replace("_", " "), d.Fuse()]),
    "nested_metaspace": lambda d: d.Sequence([d.ByteFallback(), d.Metaspace(replacement="_")]),
    "wordpiece_percent": lambda d: d.WordPiece(prefix="%%", cleanup=False),
    "wordpiece_cleanup": lambda d: d.WordPiece(prefix="##", cleanup=True),
    "nested_wordpiece": lambda d: d.Sequence([d.Strip(" ", 0, 0), d.WordPiece(prefix="%%")]),
    "bytelevel": lambda d: d.ByteLevel(),
}


@pytest.mark.parametrize("name", list(_DECODERS))
def test_canonical_bytes_follow_any_decoders_own_text(name):
    tok = _hand_made(_DECODERS[name])
    v = Vocab.from_tokenizer(tok, len(_PIECES) + 1 + 3)  # "<tool>", three padded rows
    added = tok.decode([_PIECES.index("x"), len(_PIECES)])[1:]  # WordPiece: " <tool>"
    assert v.canon[len(_PIECES)] == added.encode()
    x = _PIECES.index("x")
    assert tok.decode([x]) == "x"
    special = {_PIECES.index(s) for s in ("<unk>", "<s>", "</s>", "<|im_end|>")}
    assert v.end_ids == sorted({_PIECES.index("</s>"), _PIECES.index("<|im_end|>")})
    assert v.canon[len(_PIECES) + 1 :] == [None] * 3
    checked = 0
    for t, piece in enumerate(_PIECES):
        if t in special:
            assert v.canon[t] is None, piece
            continue
        text = tok.decode([x, t])[1:]
        if "\ufffd" in text or (name == "bytelevel" and not all(ord(c) < 0x100 for c in piece)):
            continue  # a partial character, or a piece outside the byte alphabet
        assert v.canon[t] == (text.encode() or None), (piece, text)
        checked += 1
    assert checked >= (10 if name == "bytelevel" else 14)
    assert v.size == len(_PIECES) + 4


def test_byte_pieces_and_exact_lookup_prefer_regular_pieces():
    """With byte fallback, '<0x41>' spells b'A'; the regular piece wins the exact lookup."""
    tok = _hand_made(_DECODERS["replace_underscore_bytes"])
    v = Vocab.from_tokenizer(tok, len(_PIECES))
    assert v.byte_ids[0x41] == _PIECES.index("<0x41>")
    assert v.byte_ids[0xE4] == _PIECES.index("<0xE4>")
    assert v.byte_ids[ord("x")] == _PIECES.index("x")
    assert v.byte_ids[0x20] == _PIECES.index("<0x20>")  # the byte piece, not the space '_'
    assert v.exact[b" "] == _PIECES.index("_")  # the regular piece, not '<0x20>'
    assert v.exact[b"\xe4"] == _PIECES.index("<0xE4>")
    assert v.byte_ids[ord("q")] == -1 and not v.byte_complete
    no_bytes = Vocab.from_tokenizer(
        _hand_made(_DECODERS["replace_underscore_no_bytes"]), len(_PIECES)
    )
    assert no_bytes.canon[_PIECES.index("<0x41>")] == b"<0x41>"  # no fallback: a literal piece


def test_decoder_kinds_and_space_character_are_read_from_nested_decoders():
    import json

    from unite_integrations.engine.vocab import _decoder_kinds, _space_replacement

    spec = json.loads(_hand_made(_DECODERS["nested_metaspace"]).backend_tokenizer.to_str())
    assert _decoder_kinds(spec["decoder"]) == ["Sequence", "ByteFallback", "Metaspace"]
    assert _space_replacement(spec["decoder"]) == "_"
    spec = json.loads(_hand_made(_DECODERS["replace_underscore_bytes"]).backend_tokenizer.to_str())
    assert _decoder_kinds(spec["decoder"])[:3] == ["Sequence", "Replace", "ByteFallback"]
    assert _space_replacement(spec["decoder"]) == "_"
    assert _decoder_kinds(None) == [] and _space_replacement(None) == "▁"
    assert (
        _space_replacement({"type": "Replace", "pattern": {"String": "_"}, "content": "-"}) == "▁"
    )
    # A regex pattern names no one character: the default stays (and a later decoder may say).
    regex = {"type": "Replace", "pattern": {"Regex": "_+"}, "content": " "}
    assert _space_replacement(regex) == "▁"
    metaspace = {"type": "Metaspace", "replacement": "_"}
    assert _space_replacement({"type": "Sequence", "decoders": [regex, metaspace]}) == "_"


def test_bytes_to_unicode_is_the_byte_level_alphabet():
    from tokenizers import pre_tokenizers

    from unite_integrations.engine.vocab import bytes_to_unicode

    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert (table[32], table[10], table[ord("A")], table[0xFF], table[0xAD]) == (
        "Ġ",
        "Ċ",
        "A",
        "ÿ",
        "Ń",
    )


class _NotATensor:
    """Something only a full unpickling can load (``weights_only`` refuses it)."""


def test_cross_map_cache_is_read_back_and_untrusted_files_are_rebuilt(vocabs, tmp_path):
    import torch

    a, b = vocabs["bytelevel_bpe"], vocabs["sentencepiece_bpe"]
    built = build_cross_map(a, b, tmp_path / "new" / "dir")  # a cache folder made as needed
    assert list(tmp_path.joinpath("new", "dir", "maps").glob("*.pt"))
    built = build_cross_map(a, b, tmp_path)
    (path,) = tmp_path.joinpath("maps").glob("*.pt")
    # A planted file is what the next call returns: the cache is read, not rebuilt.
    torch.save({"column": (built.column + 1).int(), "exact": ~built.exact}, path)
    read = build_cross_map(a, b, tmp_path)
    assert read.column.equal(built.column + 1) and read.exact.equal(~built.exact)
    assert (read.column.dtype, read.exact.dtype) == (torch.long, torch.bool)
    # A file needing a full unpickling is never trusted, nor one that is not a tensor file.
    for planted in [{"column": built.column + 1, "exact": built.exact, "x": _NotATensor()}, None]:
        if planted is None:
            path.write_bytes(b"not a tensor file")
        else:
            torch.save(planted, path)
        rebuilt = build_cross_map(a, b, tmp_path)
        assert rebuilt.column.equal(built.column) and rebuilt.exact.equal(built.exact)
        saved = torch.load(path, weights_only=True)  # rewritten, readable by the next call
        assert saved["column"].long().equal(built.column) and saved["exact"].equal(built.exact)


def test_space_character_defaults_are_the_tokenizers_defaults():
    from unite_integrations.engine.vocab import _space_replacement

    assert _space_replacement({"type": "Metaspace"}) == "▁"  # Metaspace's default replacement
    assert _space_replacement({"type": "Metaspace", "replacement": "_"}) == "_"
    assert _space_replacement({"type": "Sequence", "decoders": [{"type": "Fuse"}]}) == "▁"


def test_cross_map_into_a_member_missing_bytes_skips_strings_it_cannot_spell(vocabs, wordpiece):
    """Into a WordPiece member (no byte fallback), strings with a byte it cannot spell are not
    encoded (they are never candidates): column 0, not exact; the others are mapped as usual."""
    dst = wordpiece
    src = vocabs["bytelevel_bpe"]
    unspellable = set(range(256)) - dst.spellable
    m = build_cross_map(src, dst)
    skipped = mapped = 0
    for t, b in enumerate(src.canon):
        if b is None or t in src.end_ids:
            continue
        if not unspellable.isdisjoint(b) and b not in dst.exact:
            assert (int(m.column[t]), bool(m.exact[t])) == (0, False), b
            skipped += 1
        elif not m.exact[t]:
            assert int(m.column[t]) == dst.encode(b)[0], b
            mapped += 1
    assert skipped > 50 and mapped > 10


def test_end_ids_come_from_the_eos_role_end_names_and_the_callers_ids():
    """END: the tokenizer's EOS whatever its name, special tokens with an end name, and the ids
    the caller adds (``generation_config``'s), id 0 included, those past the logits left out."""
    n = len(_PIECES) + 1
    tok = _hand_made(_DECODERS["metaspace_underscore"], eos="<s>")
    v = Vocab.from_tokenizer(tok, n, extra_end_ids=[0, _PIECES.index("x"), n, -1])
    ends = {_PIECES.index(p) for p in ("<unk>", "<s>", "</s>", "<|im_end|>", "x")}
    assert v.end_ids == sorted(ends)
    assert v.canon[_PIECES.index("x")] is None and v.exact.get(b"x") is None


def test_bytes_outside_utf8_are_spelled_by_byte_tokens_id_0_included():
    v = Vocab(None, [b"\xff", b"a", b"\xfe\xfe"], [], [-1] * 256, {}, "hand-made")
    v.byte_ids[0xFF], v.byte_ids[ord("a")] = 0, 1
    assert v.encode(b"\xff\xff") == [0, 0]
    with pytest.raises(TokenizerError, match=r"cannot encode bytes b'\\xfe': the tokenizer has no"):
        v.encode(b"\xfe")


def test_retokenize_tail_starts_its_window_on_a_character_boundary(vocabs):
    """A window whose first id is a continuation byte moves back to the character's lead byte, so
    the character is re-tokenized whole (here into its own token)."""
    from unite_integrations.engine.decode import retokenize_tail

    v = vocabs["sentencepiece_bpe"]
    prompt = v.encode(b"Hello")
    char = "中".encode()
    assert char in v.exact  # one token of this vocabulary
    ids = prompt + v.encode(b" x") + [v.byte_ids[b] for b in char]  # spelled byte by byte
    lead = len(ids) - 3
    keep, new = retokenize_tail(v, ids, len(prompt), b"!", window=2)  # starts on the 2nd byte
    assert (keep, new) == (lead, v.encode(char + b"!"))
    assert new[0] == v.exact[char]
    assert retokenize_tail(v, ids, len(prompt), b"!", window=3) == (keep, new)  # on the lead
    assert retokenize_tail(v, ids, len(prompt), b"!", window=1) == (keep, new)  # on the 3rd byte


def test_retokenize_tail_keeps_every_id_that_did_not_change(vocabs):
    from unite_integrations.engine.decode import retokenize_tail

    v = vocabs["bytelevel_bpe"]
    prompt = v.encode(b"Hello")
    ids = prompt + v.encode(b" the cat sat on the")
    tail = v.encode(b" the cat sat on the!")
    old = ids[len(prompt) :]
    same = next((n for n, (a, b) in enumerate(zip(old, tail)) if a != b), min(len(old), len(tail)))
    assert same >= 3
    keep, new = retokenize_tail(v, ids, len(prompt), b"!", window=32)
    assert (keep, new) == (len(prompt) + same, tail[same:])


def test_pending_updates_compose():
    """``compose_updates(u, v)``: v applies to the ids after u; a None side changes nothing."""
    from unite_integrations.engine.sequences import apply_update, compose_updates

    ids = [1, 2, 3, 4, 5, 6]
    u, v = (5, [7, 8]), (6, [9])  # v keeps u's first new id
    assert compose_updates(u, v) == (5, [7, 9]) == (5, apply_update(apply_update(ids, u), v)[5:])
    assert (
        compose_updates(u, None) == u
        and compose_updates(None, v) == v
        and compose_updates(None, None) is None
    )
    w = (3, [0])  # w rolls back past u's kept ids: u is undone entirely
    assert compose_updates(u, w) == w and apply_update(apply_update(ids, u), w) == apply_update(
        ids, compose_updates(u, w)
    )


def test_special_tokens_past_the_logits_are_left_out():
    """A tokenizer may name more ids than the model has logits for: a special token past them
    (here an end name) is neither an end id nor read, and the vocabulary has the logits' size."""
    specials = ("<unk>", "<s>", "</s>", "<|im_end|>", "<|endoftext|>")
    tok = _hand_made(_DECODERS["metaspace_underscore"], specials=specials)
    n = len(_PIECES)
    assert tok.convert_tokens_to_ids("<|endoftext|>") == n  # the first id past the logits
    v = Vocab.from_tokenizer(tok, n)
    assert v.end_ids == sorted({_PIECES.index("</s>"), _PIECES.index("<|im_end|>")})
    assert v.size == n


def test_a_later_token_with_the_same_bytes_never_takes_the_exact_lookup():
    """An added text token spelling the same bytes as a regular piece ('_y' and ' y' under a
    Metaspace decoder): both have the bytes, the exact lookup keeps the first, regular piece."""
    from tokenizers import AddedToken

    tok = _hand_made(_DECODERS["metaspace_underscore"])
    tok.add_tokens([AddedToken(" y", special=False, normalized=False)])
    dup = tok.convert_tokens_to_ids(" y")
    assert dup == len(_PIECES) + 1  # after "<tool>"
    v = Vocab.from_tokenizer(tok, len(tok))
    assert v.canon[dup] == v.canon[_PIECES.index("_y")] == b" y"
    assert v.exact[b" y"] == _PIECES.index("_y")


def test_a_wordpiece_member_encodes_words_in_context_as_its_tokenizer_does(wordpiece):
    """WordPiece pieces that start a word carry the decoder's space (``lead``), and the tiny
    member's pre-tokenizer drops whitespace anchors: words after a space still get the
    tokenizer's own ids, not a character-by-character spelling; an unknown character is a
    ``TokenizerError``."""
    v, tok = wordpiece, wordpiece.tokenizer
    words = sorted(w for w in tok.get_vocab() if w.isalpha() and len(w) > 3)[:12]
    assert len(words) == 12
    for text in [" " + words[0], " " + " ".join(words), " " + words[5] + " " + words[2]]:
        own = tok(text, add_special_tokens=False)["input_ids"]
        assert v.encode(text.encode()) == own, text
        assert v.bytes_of(own) == text.encode()
    # A character it has no piece for becomes [UNK], which has no bytes: no anchor is clean, and
    # spelling it byte by byte is refused with the typed error (never an IndexError).
    with pytest.raises(TokenizerError, match="cannot encode bytes"):
        v.encode("\u2603".encode())


@pytest.mark.parametrize("template", ["$A </s>", "<s> $A </s>"])
def test_encoding_never_takes_the_special_tokens_a_post_processor_adds(vocabs, template):
    """A tokenizer whose post-processor wraps text in special tokens (BERT's [CLS] x [SEP]):
    in-context encoding asks for the text alone, so no end or start token enters a member's ids."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(vocabs["sentencepiece_unigram"].tokenizer)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>")}
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, i) for t, i in ids.items() if t in template]
    )
    assert tok("hi")["input_ids"][-1] == ids["</s>"]  # the tokenizer's own default adds it
    v = Vocab.from_tokenizer(tok, len(tok))
    for text in ["hello world", " the cat sat.", "x"]:
        got = v.encode(text.encode())
        assert v.bytes_of(got) == text.encode()
        assert not set(got) & set(ids.values()), (text, got)
        assert got == vocabs["sentencepiece_unigram"].encode(text.encode())
