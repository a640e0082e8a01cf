"""The shared text of a row (``engine/text.py``) against an independent model of its contract.

Pure and fast (no model): stop strings cut the text at their first occurrence however the pieces
split them, streamed deltas never show a stop string nor the start of one nor half a character,
and all deltas together are exactly the final text.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unite_integrations.engine.text import RowText, complete_utf8_prefix, partial_suffix


@pytest.mark.parametrize(
    ("data", "keep"),
    [
        (b"", 0),
        (b"abc", 3),
        ("é".encode(), 2),
        ("é".encode()[:1], 0),
        (b"a" + "中".encode()[:2], 1),
        (b"a" + "中".encode()[:1], 1),
        (b"ab" + "😀".encode()[:3], 2),
        (b"ab" + "😀".encode()[:1], 2),
        ("😀".encode(), 4),
        (b"a\x80", 2),  # a stray continuation byte can never complete: nothing to hold back
        (b"a\xff", 2),
        (b"\xe4\xb8\xad\xe4", 3),
        ("ሀ".encode()[:2], 0),  # lead byte 0xE1: every 3-byte lead, not only 0xE0
        (b"x" + "ሀ".encode()[:1], 1),
        (b"x" + "ϴ".encode()[:1], 1),  # a 2-byte lead 0xCF
        (b"x" + "񁀀".encode()[:3], 1),  # a 4-byte lead 0xF1
    ],
)
def test_complete_utf8_prefix_cases(data, keep):
    assert complete_utf8_prefix(data) == keep


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=6), st.integers(0, 3))
def test_complete_utf8_prefix_is_the_last_character_boundary(text, cut):
    """On a prefix of valid UTF-8, the kept length is the last character boundary within it."""
    full = text.encode()
    data = full[: max(0, len(full) - cut)]
    boundaries = {len(text[:i].encode()) for i in range(len(text) + 1)}
    assert complete_utf8_prefix(data) == max(b for b in boundaries if b <= len(data))
    assert complete_utf8_prefix(bytearray(data)) == complete_utf8_prefix(data)


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=400, deadline=None)
@given(
    text=st.text(alphabet="ab\n中😀é ", max_size=16),
    stops=st.lists(st.text(alphabet="ab\n中é ", min_size=1, max_size=3), max_size=2),
    cuts=st.lists(st.integers(0, 64), max_size=10),
)
def test_row_text_against_a_model_of_stop_strings_and_streaming(text, stops, cuts):
    data = text.encode()
    pieces = _pieces(data, cuts)
    # The model: generation stops after the first piece with which some stop string occurs; the
    # text ends where the earliest stop string then found begins.
    end, seen, hits = len(data), b"", []
    for piece in pieces:
        seen += piece
        hits = [seen.find(s.encode()) for s in stops if s.encode() in seen]
        if hits:
            end = min(hits)
            break
    row = RowText(tuple(stops))
    streamed = ""
    stopped_at = None
    for n, piece in enumerate(pieces):
        done = row.append(piece)
        delta = row.take_delta()
        streamed += delta
        shown = streamed.encode()
        # Never past the end, never a stop string, never the start of one at the end.
        assert data[: len(shown)] == shown and len(shown) <= end
        for s in stops:
            assert s not in streamed
        if done:
            stopped_at = n
            break
    streamed += row.take_delta(final=True)
    assert streamed == data[:end].decode("utf-8", errors="replace")
    assert row.text == data[:end].decode("utf-8", errors="replace")
    assert (stopped_at is not None) == bool(hits)


def test_a_stop_string_split_over_three_pieces_is_held_back_then_cut():
    row = RowText(("STOP",))
    out = []
    for piece in (b"go S", b"T", b"O", b"P later"):
        done = row.append(piece)
        out.append(row.take_delta())
        if done:
            break
    assert out == ["go ", "", "", ""]
    assert done and row.text == "go "
    assert row.take_delta(final=True) == ""


def test_a_held_back_prefix_that_turns_out_not_to_stop_is_released():
    row = RowText(("STOP",))
    row.append(b"a ST")
    assert row.take_delta() == "a "
    row.append(b"AR")
    assert row.take_delta() == "STAR"
    row.append("中".encode()[:2])
    assert row.take_delta() == ""
    row.append("中".encode()[2:])
    assert row.take_delta() == "中"
    assert row.take_delta(final=True) == "" and row.text == "a STAR中"


def test_earliest_of_several_stop_strings_wins():
    row = RowText(("later", "ear"))
    assert row.append(b"an earlier word")
    assert row.text == "an "


def test_invalid_bytes_inside_streamed_text_become_replacement_characters():
    """Members can choose bytes that are not UTF-8; the stream shows U+FFFD, never raises."""
    row = RowText(())
    row.append(b"a\x80b")
    assert row.take_delta() == "a\ufffdb"
    row.append(b"\xff")
    assert row.take_delta(final=True) == "\ufffd" and row.text == "a\ufffdb\ufffd"


@given(st.text("ab<", max_size=12), st.text("ab<", min_size=1, max_size=6))
def test_partial_suffix_is_the_longest_proper_prefix_of_the_tag_ending_the_text(text, tag):
    model = max((n for n in range(1, len(tag)) if text.endswith(tag[:n])), default=0)
    assert partial_suffix(text, tag) == model
    assert partial_suffix(text.encode(), tag.encode()) == model  # the bytes overload alike


@pytest.mark.parametrize(
    ("text", "tag", "held"),
    [
        ("say <tool", "<tool>", 5),
        ("say <tool>", "<tool>", 0),  # the whole tag is found, not held back
        ("<<", "<<<", 2),
        ("x", "x", 0),
        ("", "<tool>", 0),
    ],
)
def test_partial_suffix_cases(text, tag, held):
    assert partial_suffix(text, tag) == held
