"""An independent oracle of the UniTE rule: shares no code with ``unite_integrations``.

Everything the engine derives from a tokenizer is derived here again, another way, from the raw
``tokenizer.json`` (pieces, added tokens, decoder) and ``generation_config``:

* ``OracleVocab.canon``: each token's bytes in the middle of a text, read from its piece through the
  family's decoder (byte-level BPE: the GPT-2 byte table; SentencePiece: ``▁`` -> space and
  ``<0xNN>`` byte fallback; WordPiece: ``##`` glues, any other piece starts a word).
* ``OracleVocab.end_ids``: the tokenizer's EOS, every id of ``generation_config.eos_token_id`` and
  the special tokens the spec names as end-of-sequence/end-of-turn markers.
* ``OracleVocab.encode``: in-context tokenization (after an anchor) for any bytes.

``reference_generate`` is the slow, literal rule (spec section 1): no KV cache (every step re-runs
each member on its whole sequence), Python loops over the union, dictionaries keyed by bytes, member
weights, the unsafe-byte filter, and feed-back case (b) by re-tokenizing either the member's whole
generated text (``window=None``, the paper) or the text of its last ``window`` ids (the engine's
O(1) rule; 32 by default). Outputs are bytes, with each step's chosen string and every member's
probability of it, so a test can tell two byte strings apart even where the engine's ``str`` shows
both as U+FFFD.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

END = "END"
#: End-of-sequence / end-of-turn markers named by the spec (docs: unite-algorithm.md 1.2).
END_MARKERS = frozenset(
    {
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
    }
)
#: Anchors for in-context tokenization, tried in this order (a spec convention, not engine code).
ANCHORS = ("\n", ".", "x", " ", "0", "中")
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>\Z", re.IGNORECASE)


def gpt2_byte_table() -> dict[str, int]:
    """Printable character -> byte, as GPT-2's byte-level BPE writes bytes.

    Bytes that are printable Latin-1 (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for
    themselves; the other 68 bytes, in increasing order, take the code points 256, 257, ...
    """
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in table.values()]
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


def _walk(node: Any) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return []
    out = [node]
    for child in node.get("decoders") or []:
        out += _walk(child)
    return out


@dataclass
class OracleVocab:
    """One tokenizer seen as bytes, derived from ``tokenizer.json`` alone."""

    tokenizer: Any
    kind: str  # "bytelevel" | "sentencepiece" | "wordpiece"
    canon: list[bytes | None]  # None: never a candidate (special, end, padding, empty)
    end_ids: list[int]
    exact: dict[bytes, int] = field(default_factory=dict)  # bytes -> the id that is exactly them
    byte_tok: dict[int, int] = field(default_factory=dict)  # byte -> id spelling it alone
    _cache: dict[bytes, list[int]] = field(default_factory=dict)

    @property
    def spellable(self) -> set[int]:
        return set(self.byte_tok)

    def text(self, ids: list[int]) -> bytes:
        out = b""
        for t in ids:
            c = self.canon[t]
            assert c is not None, f"id {t} is not text"
            out += c
        return out

    def encode(self, data: bytes) -> list[int]:
        """Ids that spell exactly ``data``, tokenized as in the middle of a text."""
        if data not in self._cache:
            ids: list[int] = []
            rest = data
            while rest:
                try:
                    ids += self._encode_text(rest.decode("utf-8"))
                    rest = b""
                except UnicodeDecodeError as e:
                    if e.start:
                        ids += self._encode_text(rest[: e.start].decode("utf-8"))
                    ids += [self.byte_tok[b] for b in rest[e.start : e.end]]
                    rest = rest[e.end :]
            assert self.text(ids) == data, (data, ids)
            self._cache[data] = ids
        return self._cache[data]

    def _encode_text(self, s: str) -> list[int]:
        for anchor in ANCHORS:
            ids = self.tokenizer(anchor + s, add_special_tokens=False)["input_ids"]
            spelled, n = b"", 0
            while n < len(ids) and len(spelled) < len(anchor.encode()):
                spelled += self.canon[ids[n]] or b""
                n += 1
            body = ids[n:]
            clean = spelled == anchor.encode() and all(self.canon[t] is not None for t in body)
            if clean and self.text(body) == s.encode():
                return list(body)
        out: list[int] = []  # nothing clean: one token per character, else its bytes
        for ch in s:
            b = ch.encode()
            out += [self.exact[b]] if b in self.exact else [self.byte_tok[x] for x in b]
        return out


def oracle_vocab(tokenizer: Any, generation_config: Any, logits_size: int) -> OracleVocab:
    """Canonical bytes, end ids, exact and byte lookups from the raw tokenizer files."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model["type"] == "Unigram":
        pieces: dict[int, str] = {i: p for i, (p, _) in enumerate(model["vocab"])}
    else:
        pieces = {int(i): p for p, i in model["vocab"].items()}
    added = {int(a["id"]): a for a in spec.get("added_tokens") or []}
    for i, a in added.items():
        pieces[i] = a["content"]
    decoders = _walk(spec.get("decoder"))
    types = {d.get("type") for d in decoders}
    if "ByteLevel" in types:
        kind = "bytelevel"
    elif "WordPiece" in types:
        kind = "wordpiece"
    else:
        kind = "sentencepiece"

    space = "▁"
    for d in decoders:
        if d.get("type") == "Replace" and d.get("content") == " ":
            space = d["pattern"]["String"]
        if d.get("type") == "Metaspace":
            space = d.get("replacement", space)
    prefix = next((d.get("prefix", "##") for d in decoders if d.get("type") == "WordPiece"), "##")
    table = gpt2_byte_table()

    def piece_bytes(i: int, p: str) -> bytes | None:
        if i in added:  # a non-special added token is its literal text
            return p.encode()
        if kind == "bytelevel":
            return bytes(table[c] for c in p) if all(c in table for c in p) else None
        if kind == "wordpiece":
            return p[len(prefix) :].encode() if p.startswith(prefix) else b" " + p.encode()
        m = _BYTE_PIECE.match(p) if "ByteFallback" in types else None
        return bytes([int(m.group(1), 16)]) if m else p.replace(space, " ").encode()

    special = {i for i, a in added.items() if a.get("special")}
    ends: set[int] = set()
    content_to_id = {a["content"]: i for i, a in added.items()}
    eos = getattr(tokenizer, "eos_token", None)
    if eos is not None and eos in content_to_id:
        ends.add(content_to_id[eos])
    gen = getattr(generation_config, "eos_token_id", None)
    ends |= set(gen if isinstance(gen, list) else [] if gen is None else [gen])
    ends |= {i for i in special if added[i]["content"] in END_MARKERS}
    ends = {i for i in ends if 0 <= i < logits_size}

    canon: list[bytes | None] = [None] * logits_size
    for i in range(logits_size):
        if i in pieces and i not in special and i not in ends:
            canon[i] = piece_bytes(i, pieces[i]) or None
    byte_piece = {i for i, p in pieces.items() if "ByteFallback" in types and _BYTE_PIECE.match(p)}
    exact: dict[bytes, int] = {}
    byte_tok: dict[int, int] = {}
    for i in sorted(range(logits_size), key=lambda i: (i in byte_piece, i)):
        c = canon[i]
        if c is not None:
            exact.setdefault(c, i)
    for i in sorted(range(logits_size), key=lambda i: (i not in byte_piece, i)):
        c = canon[i]
        if c is not None and len(c) == 1:
            byte_tok.setdefault(c[0], i)
    return OracleVocab(tokenizer, kind, canon, sorted(ends), exact, byte_tok)


def member_oracle(member: Any) -> OracleVocab:
    """The oracle's view of an engine member (its tokenizer, model config and logits size)."""
    size = int(member.model.get_output_embeddings().weight.shape[0])
    return oracle_vocab(member.tokenizer, member.model.generation_config, size)


# ---------------------------------------------------------------------------- the UniTE rule


@dataclass
class Reference:
    """One row's result: the bytes, the chosen strings, who proposed each, why it stopped."""

    text: bytes
    pieces: list[bytes]
    proposers: list[list[int]]
    probs: list[list[float]]  # per step, each member's union probability of the chosen string
    stopped: bool
    # Per step (the final END's too), the mixed distribution: union string (or END) -> p.
    dists: list[dict[Any, float]] = field(default_factory=list)


def _logits(model: Any, ids: list[int]) -> list[float]:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().tolist()


def reference_of(
    engine: Any,
    prompt: Any,
    max_new_tokens: int,
    *,
    weights: list[float] | None = None,
    k: int | None = None,
    window: int | None = 32,
    temperature: float = 0.0,
) -> Reference:
    """:func:`reference_generate` over an engine's members (their models, tokenizers and prompt
    ids; nothing else of the engine), its weights and top-k unless given."""
    members = engine.members
    return reference_generate(
        [m.model for m in members],
        [member_oracle(m) for m in members],
        [m.encode_prompt(prompt) for m in members],
        list(engine.config.weights if weights is None else weights),
        k=engine.config.top_k if k is None else k,
        max_new_tokens=max_new_tokens,
        window=window,
        temperature=temperature,
    )


def reference_generate(
    models: list[Any],
    vocabs: list[OracleVocab],
    prompts: list[list[int]],
    weights: list[float],
    k: int,
    max_new_tokens: int,
    window: int | None = 32,
    temperature: float = 0.0,
) -> Reference:
    """Greedy UniTE for one row; ``prompts[i]`` is member i's prompt ids. ``temperature`` > 0
    divides the scores before the softmax (step 5) and still takes the most likely string: what
    a sampled row whose nucleus holds only its best string (a tiny ``top_p``) chooses."""
    n = len(models)
    total = sum(weights)
    w = [x / total for x in weights]
    safe = set(range(256))
    if n > 1:
        for v in vocabs:
            safe &= v.spellable
    gen: list[list[int]] = [[] for _ in models]
    text = b""
    pieces: list[bytes] = []
    proposers: list[list[int]] = []
    probs: list[list[float]] = []
    dists: list[dict[Any, float]] = []
    t = temperature if temperature > 0 else 1.0
    # Candidates: text tokens whose every byte all members can spell (the unsafe-byte filter).
    cands = [
        [(t, c) for t, c in enumerate(v.canon) if c is not None and set(c) <= safe] for v in vocabs
    ]
    for _ in range(max_new_tokens):
        logits = [_logits(m, p + g) for m, p, g in zip(models, prompts, gen)]
        # 1-2. Each member's top-k strings: its candidate tokens, plus END at its best end logit.
        props: list[list[tuple[float, Any, int]]] = []
        for z, v, cs in zip(logits, vocabs, cands):
            entries = [(z[t], c, t) for t, c in cs]
            entries.append((max(z[t] for t in v.end_ids), END, -1))
            props.append(heapq.nlargest(k, entries, key=lambda e: e[0]))
        # 3. The union, in order of appearance.
        union: list[Any] = []
        for entries in props:
            for _, s, _ in entries:
                if s not in union:
                    union.append(s)

        # 4. Every member scores every string.
        def score(i: int, u: Any, logits: list[list[float]] = logits, props: Any = props) -> float:
            z, v = logits[i], vocabs[i]
            own = [x for x, s, _ in props[i] if s == u]
            if own:
                return max(own)
            if u == END:
                return max(z[t] for t in v.end_ids)
            if u in v.exact:
                return z[v.exact[u]]
            return z[v.encode(u)[0]]  # the first sub-token, in context

        scores = [[score(i, u) for u in union] for i in range(n)]
        # 5-6. Softmax per member over the union, weighted average.
        p = [0.0] * len(union)
        p_i = []
        for i in range(n):
            top = max(scores[i])
            e = [math.exp((s - top) / t) for s in scores[i]]
            p_i.append([x / sum(e) for x in e])
            for c in range(len(union)):
                p[c] += w[i] * p_i[i][c]
        # 7. Greedy; ties go to the primary member's scores, then to the earlier string.
        best = max(p)
        slot = max((c for c in range(len(union)) if p[c] == best), key=lambda c: (scores[0][c], -c))
        choice = union[slot]
        dists.append(dict(zip(union, p)))
        if choice == END:
            return Reference(text, pieces, proposers, probs, True, dists)
        proposers.append([i for i in range(n) if any(s == choice for _, s, _ in props[i])])
        probs.append([p_i[i][slot] for i in range(n)])
        # 8. Feed back: (a) the id proposed or the exact token, (b) re-tokenize a tail.
        for i, v in enumerate(vocabs):
            own = [t for _, s, t in props[i] if s == choice]
            if own:
                gen[i].append(own[0])
            elif choice in v.exact:
                gen[i].append(v.exact[choice])
            else:
                start = 0 if window is None else max(0, len(gen[i]) - window)
                while start > 0 and (v.canon[gen[i][start]] or b"\0")[0] & 0xC0 == 0x80:
                    start -= 1
                gen[i] = gen[i][:start] + v.encode(v.text(gen[i][start:]) + choice)
        text += choice
        pieces.append(choice)
        for v, g in zip(vocabs, gen):
            assert v.text(g) == text
    return Reference(text, pieces, proposers, probs, False, dists)


def transformers_greedy(member: Any, prompt: str, max_new_tokens: int) -> tuple[bytes, bool, int]:
    """(bytes, stopped, tokens generated) from the member's own ``generate``, told the spec's rules through the
    oracle: stop at any end id, never emit another non-text token (specials, padding rows)."""
    v = member_oracle(member)
    never = [t for t, c in enumerate(v.canon) if c is None and t not in v.end_ids]
    ids = member.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = member.model.generate(
            **ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=v.end_ids[0],
            eos_token_id=v.end_ids,
            suppress_tokens=never,
        )
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    ends = set(v.end_ids)
    stopped = any(t in ends for t in new)
    if stopped:
        new = new[: min(n for n, t in enumerate(new) if t in ends)]
    return v.text(new), stopped, len(new)


def as_engine_text(data: bytes) -> str:
    """The engine's ``str`` for these bytes: strict UTF-8 where the bytes are valid, U+FFFD for
    each maximal invalid subpart (the documented lossy view of ``GenerationResult.text``).

    A lossy view alone could hide a differing partial character, so the exactness tests also
    compare, step by step, each member's probability of the chosen string (``Reference.probs``):
    two different byte strings do not get the same probabilities from every member.
    """
    out, rest = "", data
    while rest:
        try:
            return out + rest.decode("utf-8")
        except UnicodeDecodeError as e:
            out += rest[: e.start].decode("utf-8") + "\ufffd"
            rest = rest[e.end :]
    return out
