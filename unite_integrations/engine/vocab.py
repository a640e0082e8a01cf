"""Vocabularies as bytes: canonical token bytes, the END sentinel, exact encoding, cross maps.

UniTE compares candidate tokens of different tokenizers as *strings*. Strings are compared as bytes,
never ``str``, because byte-level BPE and SentencePiece byte-fallback pieces can hold part of a UTF-8
character. ``tokenizer.decode([id])`` is not a token's bytes (SentencePiece drops a leading space,
partial characters become U+FFFD), so canonical bytes come from the pieces themselves, through the
tokenizer family's own byte mapping.

Two facts every member needs, both pure functions of its tokenizer:

* ``canon[id]``: the bytes a token adds in the middle of a text; ``None`` for tokens that must
  never be candidates (BOS, PAD, template markers, ids past the tokenizer in a padded embedding).
* ``encode(data)``: ids whose canonical bytes concatenate to exactly ``data``, tokenized *in
  context* (after an anchor), for any bytes at all, valid UTF-8 or not.

Cross maps (``CrossMap``) precompute, for every token of member j, which column of member i's logits
scores it: the same string if it is one token of i, else its first sub-token in i.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import TokenizerError

__all__ = ["END", "CrossMap", "Vocab", "build_cross_map", "bytes_to_unicode"]

#: Global string id of the END sentinel shared by every member's end-of-sequence tokens.
END = 0

# End-of-turn/end-of-text tokens of common families; any that is a special token of a member is END.
_END_NAMES = (
    "</s>",
    "<eos>",
    "<|endoftext|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<|eot|>",
    "<|return|>",
)
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SURROGATES = re.compile("[\udc80-\udcff]+")
# Anchors tried in order when tokenizing in context; one whose boundary stays clean is used.
_ANCHORS = ("\n", ".", "x", " ", "0", "\u4e2d")
_MAP_FORMAT = 2  # 2: WordPiece pieces read through their decoder
#: Bytes of ordinary UTF-8 text: tab, newline, CR, printable ASCII, continuation and lead bytes.
ESSENTIAL_BYTES = frozenset([9, 10, 13, *range(0x20, 0x7F), *range(0x80, 0xC0), *range(0xC2, 0xF1)])


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable character table used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _decoder_kinds(node: Any) -> list[str]:
    if not isinstance(node, dict):
        return []
    kinds = [str(node.get("type"))]
    for child in node.get("decoders") or []:
        kinds += _decoder_kinds(child)
    return kinds


def _find_decoder(node: Any, kind: str) -> dict[str, Any] | None:
    """The first decoder of type ``kind`` in a decoder tree (a ``Sequence`` nests others)."""
    if not isinstance(node, dict):
        return None
    if node.get("type") == kind:
        return node
    for child in node.get("decoders") or []:
        found = _find_decoder(child, kind)
        if found is not None:
            return found
    return None


# What the WordPiece decoder's ``cleanup`` does to each token, in its order (tokenizers' own list).
_WORDPIECE_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" do not", " don't"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _wordpiece_text(piece: str, prefix: str, cleanup: bool) -> str:
    """A WordPiece token's text in the middle of a text, as the tokenizer's decoder writes it: a
    continuation piece (``##x``) glues to the previous one, any other piece starts a word after a
    space; ``cleanup`` then removes the space before punctuation and contractions, token by
    token."""
    text = piece[len(prefix) :] if prefix and piece.startswith(prefix) else " " + piece
    if cleanup:
        for old, new in _WORDPIECE_CLEANUP:
            text = text.replace(old, new)
    return text


def _space_replacement(node: Any) -> str:
    """The character a SentencePiece-style decoder turns into a space (usually '▁')."""
    if not isinstance(node, dict):
        return "▁"
    if node.get("type") == "Replace":
        pattern = node.get("pattern", {})
        if isinstance(pattern, dict) and node.get("content") == " ":
            return str(pattern.get("String", "▁"))
    if node.get("type") == "Metaspace":
        return str(node.get("replacement", "▁"))
    for child in node.get("decoders") or []:
        found = _space_replacement(child)
        if found != "▁":
            return found
    return "▁"


@dataclass
class Vocab:
    """One member's vocabulary seen as bytes. Build with :meth:`from_tokenizer`."""

    tokenizer: Any
    canon: list[bytes | None]
    end_ids: list[int]
    byte_ids: list[int]
    exact: dict[bytes, int]
    fingerprint: str
    #: Bytes the first token of a text has in ``canon`` but not in the text: 1 for WordPiece, whose
    #: word-start pieces carry the space that separates them from the previous word.
    lead: int = 0

    @property
    def size(self) -> int:
        return len(self.canon)

    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, logits_size: int, extra_end_ids: Iterable[int] = ()
    ) -> Vocab:
        """Canonical bytes for ids ``0..logits_size-1`` (the model may pad its vocabulary)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TokenizerError(
                f"{type(tokenizer).__name__} is a slow tokenizer; load a fast one "
                "(tokenizer.json) so token bytes can be read exactly"
            )
        spec = json.loads(backend.to_str())
        kinds = _decoder_kinds(spec.get("decoder"))
        special_ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
        added = {int(i): tok for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        special_ids |= {i for i, t in added.items() if getattr(t, "special", False)}
        pieces = tokenizer.convert_ids_to_tokens(list(range(min(logits_size, len(tokenizer)))))

        canon: list[bytes | None] = [None] * logits_size
        lead = 0
        if "ByteLevel" in kinds:
            table = {c: b for b, c in bytes_to_unicode().items()}
            for i, piece in enumerate(pieces):
                if piece is None or i in special_ids:
                    continue
                if i in added:
                    canon[i] = piece.encode()
                elif all(c in table for c in piece):
                    canon[i] = bytes(table[c] for c in piece)
        elif "WordPiece" in kinds:
            wp = _find_decoder(spec.get("decoder"), "WordPiece") or {}
            prefix, cleanup = str(wp.get("prefix", "##")), bool(wp.get("cleanup", True))
            lead = 1
            for i, piece in enumerate(pieces):
                if piece is None or i in special_ids:
                    continue
                # Added tokens go through the decoder too: a space before them as well.
                canon[i] = _wordpiece_text(piece, prefix, cleanup).encode()
        else:
            space = _space_replacement(spec.get("decoder"))
            fallback = "ByteFallback" in kinds
            for i, piece in enumerate(pieces):
                if piece is None or i in special_ids:
                    continue
                m = _BYTE_PIECE.match(piece) if fallback else None
                if m:
                    canon[i] = bytes([int(m.group(1), 16)])
                elif i in added:
                    canon[i] = piece.encode()
                else:
                    canon[i] = piece.replace(space, " ").encode()
        canon = [c if c else None for c in canon]  # empty pieces can never be chosen

        names = set(_END_NAMES)
        end_ids = {int(i) for i in extra_end_ids if 0 <= int(i) < logits_size}
        if tokenizer.eos_token_id is not None:
            end_ids.add(int(tokenizer.eos_token_id))
        end_ids |= {i for i in special_ids if i < len(pieces) and pieces[i] in names}
        for i in end_ids:
            canon[i] = None

        exact: dict[bytes, int] = {}
        byte_ids: list[int] = [-1] * 256
        for i, b in enumerate(canon):
            if b is None:
                continue
            if len(b) == 1 and (byte_ids[b[0]] < 0 or _BYTE_PIECE.match(pieces[i] or "")):
                byte_ids[b[0]] = i
            # Regular pieces win over byte-fallback pieces and over later duplicates.
            if b not in exact or (
                _BYTE_PIECE.match(pieces[exact[b]] or "") and not _BYTE_PIECE.match(pieces[i] or "")
            ):
                exact[b] = i
        fingerprint = hashlib.sha256(
            (backend.to_str() + f"|{logits_size}|{sorted(end_ids)}").encode()
        ).hexdigest()[:24]
        return cls(tokenizer, canon, sorted(end_ids), byte_ids, exact, fingerprint, lead)

    # -- encoding -------------------------------------------------------------------------------

    @property
    def byte_complete(self) -> bool:
        """True when every byte has a token, so any text at all can be encoded exactly."""
        return all(i >= 0 for i in self.byte_ids)

    @property
    def spellable(self) -> frozenset[int]:
        """Bytes this member can spell one by one."""
        return frozenset(b for b in range(256) if self.byte_ids[b] >= 0)

    def require_spellable(self, name: str) -> None:
        """Members must spell the bytes of ordinary text to mirror what other members write.

        Real byte-level vocabularies can lack a few bytes (SmolLM2 has no token for some control
        characters and for bytes that never occur in UTF-8); strings with such bytes are simply
        never candidates. A tokenizer missing ordinary bytes (WordPiece, SentencePiece without byte
        fallback) cannot be ensembled.
        """
        missing = sorted(ESSENTIAL_BYTES - self.spellable)
        if missing:
            raise TokenizerError(
                f"member {name!r}: its tokenizer cannot spell {len(missing)} ordinary bytes "
                f"(e.g. {bytes(missing[:8])!r}): it is neither byte-level BPE nor SentencePiece "
                "with byte fallback, so it cannot mirror text written by other members. Use it "
                "alone, or pick a model with a byte-complete tokenizer."
            )

    def bytes_of(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.canon[i] or b"" for i in ids)

    def encode(self, data: bytes) -> list[int]:
        """Ids whose canonical bytes are exactly ``data``, tokenized as in the middle of a text."""
        return self.encode_many([data])[0]

    def encode_many(self, texts: Sequence[bytes]) -> list[list[int]]:
        """Batched :meth:`encode`: valid UTF-8 runs go through the tokenizer, other bytes alone."""
        runs_per_text: list[list[tuple[bool, str | bytes]]] = []
        strings: list[str] = []
        for data in texts:
            runs: list[tuple[bool, str | bytes]] = []
            text = data.decode("utf-8", errors="surrogateescape")
            pos = 0
            for m in _SURROGATES.finditer(text):
                if m.start() > pos:
                    runs.append((True, text[pos : m.start()]))
                runs.append((False, m.group().encode("utf-8", errors="surrogateescape")))
                pos = m.end()
            if pos < len(text):
                runs.append((True, text[pos:]))
            runs_per_text.append(runs)
            strings += [r for ok, r in runs if ok and isinstance(r, str)]
        encoded = iter(self._encode_strings(strings))
        out: list[list[int]] = []
        for runs in runs_per_text:
            ids: list[int] = []
            for ok, run in runs:
                if ok:
                    ids += next(encoded)
                else:
                    assert isinstance(run, bytes)
                    ids += self._byte_tokens(run)
            out.append(ids)
        return out

    def _byte_tokens(self, data: bytes) -> list[int]:
        ids = [self.byte_ids[b] for b in data]
        if any(i < 0 for i in ids):
            raise TokenizerError(
                f"cannot encode bytes {data!r}: the tokenizer has no token for some of them"
            )
        return ids

    def _encode_strings(self, strings: list[str]) -> list[list[int]]:
        results: list[list[int] | None] = [None] * len(strings)
        pending = list(range(len(strings)))
        for anchor in _ANCHORS:
            if not pending:
                break
            alen = len(anchor.encode()) + self.lead  # the anchor starts the text
            batch = self.tokenizer(
                [anchor + strings[j] for j in pending], add_special_tokens=False
            )["input_ids"]
            still: list[int] = []
            for j, ids in zip(pending, batch):
                cut, total = 0, 0
                while cut < len(ids) and total < alen:
                    total += len(self.canon[ids[cut]] or b"")
                    cut += 1
                body = ids[cut:]
                if total == alen and self.bytes_of(body) == strings[j].encode():
                    results[j] = body
                else:
                    still.append(j)
            pending = still
        for j in pending:  # no clean anchor, or a normalizer changed the text: spell it in bytes
            results[j] = self._spell(strings[j])
        return [r if r is not None else [] for r in results]

    def _spell(self, text: str) -> list[int]:
        ids: list[int] = []
        for ch in text:
            one = self.exact.get(ch.encode())
            ids += [one] if one is not None else self._byte_tokens(ch.encode())
        return ids


@dataclass
class CrossMap:
    """Where member i reads the score of each token of member j.

    ``column[t]`` indexes member i's *extended* logits (its vocabulary plus one END column at
    index ``vocab_i.size``); ``exact[t]`` says whether the string of t is exactly one token of i,
    in which case ``column[t]`` is that token and i can append it as is.
    """

    column: torch.Tensor  # int64 [|V_j|]
    exact: torch.Tensor  # bool [|V_j|]


def build_cross_map(src: Vocab, dst: Vocab, cache_dir: Path | None = None) -> CrossMap:
    """Map src's tokens into dst's columns; cached on disk by both tokenizers' fingerprints."""
    path = None
    if cache_dir is not None:
        key = f"{src.fingerprint}-{dst.fingerprint}-v{_MAP_FORMAT}"
        path = Path(cache_dir) / "maps" / f"{key}.pt"
        if path.exists():
            try:
                data = torch.load(path, weights_only=True)
                return CrossMap(data["column"].long(), data["exact"].bool())
            except Exception:  # a corrupt cache file is rebuilt, never trusted
                path.unlink(missing_ok=True)
    end_col = dst.size
    column = torch.zeros(src.size, dtype=torch.long)
    exact = torch.zeros(src.size, dtype=torch.bool)
    for t in src.end_ids:
        column[t], exact[t] = end_col, True
    misses: list[int] = []
    for t, b in enumerate(src.canon):
        if b is None:
            continue
        hit = dst.exact.get(b)
        if hit is not None:
            column[t], exact[t] = hit, True
        else:
            misses.append(t)
    # Strings with a byte dst cannot spell are never candidates (see Vocab.require_spellable).
    unspellable = set(range(256)) - dst.spellable
    misses = [t for t in misses if unspellable.isdisjoint(src.canon[t] or b"")]
    if misses:
        encoded = dst.encode_many([src.canon[t] or b"" for t in misses])
        for t, ids in zip(misses, encoded):
            column[t] = ids[0]
    result = CrossMap(column, exact)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(result)}")
        torch.save({"column": column.int(), "exact": exact}, tmp)
        tmp.replace(path)
    return result
