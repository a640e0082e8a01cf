"""Property tests of the byte view of vocabularies: canonical bytes, exact encoding, cross maps."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import FAMILIES
from transformers import AutoTokenizer

from unite_integrations.engine.vocab import _ANCHORS, Vocab, build_cross_map

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
