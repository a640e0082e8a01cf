"""Vocabulary facts about a pair of members: sizes, words split alike, top-k overlap.

The paper finds vocabulary size barely matters for UniTE (about 80% of common words tokenize the
same way across popular models), so these facts are informative only; they never change a verdict.

* ``identical_word_share``: of common English words, written as in the middle of a text (with a
  leading space), the share both tokenizers split into the same pieces (canonical bytes).
* ``topk_overlap``: on sample text, at positions where both tokenizations have a token boundary (the
  same number of bytes left to the end), the mean share of top-k next-token strings the members
  have in common (intersection over k); ``top1_agreement``: the share where both top-1 strings are
  equal. This needs one forward pass per member per text, no generation.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ..engine.members import LoadedMember
from ..engine.vocab import Vocab
from .report import VocabularyFacts

__all__ = [
    "COMMON_WORDS",
    "SAMPLE_TEXTS",
    "identical_word_share",
    "pair_facts",
    "sample_words",
    "topk_overlap",
]

#: Frequent English words of various lengths (a mix of function words, verbs and nouns).
COMMON_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            "the",
            "of",
            "and",
            "to",
            "in",
            "is",
            "was",
            "for",
            "that",
            "with",
            "as",
            "on",
            "by",
            "he",
            "it",
            "at",
            "from",
            "his",
            "an",
            "are",
            "were",
            "which",
            "be",
            "this",
            "has",
            "had",
            "not",
            "but",
            "or",
            "they",
            "first",
            "one",
            "their",
            "its",
            "new",
            "after",
            "who",
            "been",
            "also",
            "she",
            "two",
            "her",
            "have",
            "more",
            "time",
            "when",
            "all",
            "during",
            "other",
            "there",
            "can",
            "into",
            "only",
            "would",
            "some",
            "most",
            "many",
            "later",
            "may",
            "between",
            "over",
            "about",
            "such",
            "three",
            "where",
            "then",
            "both",
            "these",
            "under",
            "while",
            "city",
            "through",
            "year",
            "world",
            "since",
            "state",
            "used",
            "however",
            "known",
            "people",
            "because",
            "before",
            "part",
            "early",
            "school",
            "number",
            "called",
            "against",
            "team",
            "including",
            "well",
            "until",
            "same",
            "several",
            "second",
            "being",
            "each",
            "them",
            "film",
            "series",
            "life",
            "where",
            "became",
            "high",
            "family",
            "national",
            "government",
            "history",
            "group",
            "found",
            "like",
            "made",
            "although",
            "years",
            "following",
            "another",
            "around",
            "could",
            "member",
            "water",
            "small",
            "large",
            "music",
            "within",
            "often",
            "important",
            "public",
            "system",
            "different",
            "power",
            "language",
            "century",
            "american",
            "country",
            "development",
            "children",
            "million",
            "university",
            "written",
            "human",
            "president",
            "example",
            "political",
            "information",
            "between",
            "question",
            "answer",
            "science",
            "energy",
            "nature",
            "animal",
            "problem",
            "market",
            "business",
            "community",
            "science",
            "building",
            "important",
            "understand",
            "position",
            "position",
            "certain",
            "because",
            "weather",
            "mountain",
            "ocean",
            "river",
            "kingdom",
            "village",
            "daughter",
            "husband",
            "mother",
            "father",
            "brother",
            "sister",
            "teacher",
            "student",
            "doctor",
            "computer",
            "program",
            "machine",
            "library",
            "museum",
            "hospital",
            "garden",
            "kitchen",
            "window",
            "morning",
            "evening",
            "summer",
            "winter",
            "spring",
            "autumn",
            "yesterday",
            "tomorrow",
            "beautiful",
            "difficult",
            "dangerous",
            "possible",
            "necessary",
            "available",
            "comfortable",
            "interesting",
            "electricity",
            "temperature",
            "experiment",
            "photosynthesis",
            "organism",
            "molecule",
            "planet",
            "gravity",
        ]
    )
)

#: Short varied prose used for the top-k overlap and words when the caller gives no text.
SAMPLE_TEXTS: tuple[str, ...] = (
    "The city council met on Tuesday evening to discuss the new library, which will open next "
    "spring near the river. Most members agreed that the building should stay open late.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide "
    "to make sugar. Oxygen is released as a by-product of this reaction.",
    "Question: Which planet is known as the Red Planet?\nAnswer: Mars.\n\nQuestion: Who wrote "
    "the play Romeo and Juliet?\nAnswer: William Shakespeare.",
    "She bought three apples and two oranges. Each apple cost 40 cents and each orange cost 25 "
    "cents, so she paid 1.70 dollars in total.",
    "After the long winter, the farmers in the village prepared their fields. The weather was "
    "warm, and the children played in the garden until dinner.",
    "A thermometer measures temperature. When a metal spoon is left in hot soup, heat moves from "
    "the soup to the spoon by conduction.",
)

_WORD = re.compile(r"[A-Za-z]{2,}")


def sample_words(texts: Iterable[str], limit: int = 400) -> list[str]:
    """Common words first, then the most frequent words of ``texts``; distinct, at most limit."""
    seen: dict[str, None] = dict.fromkeys(COMMON_WORDS)
    counts = Counter(w for t in texts for w in _WORD.findall(t))
    for w, _ in counts.most_common():
        seen.setdefault(w, None)
    return list(seen)[:limit]


def identical_word_share(a: Vocab, b: Vocab, words: Sequence[str]) -> float:
    """Share of ``words`` (each with a leading space) split into the same pieces by both."""
    if not words:
        return 0.0
    data = [(" " + w).encode() for w in words]
    ids_a, ids_b = a.encode_many(data), b.encode_many(data)
    same = sum([a.canon[i] for i in x] == [b.canon[i] for i in y] for x, y in zip(ids_a, ids_b))
    return same / len(words)


def _next_token_sets(member: LoadedMember, text: str, k: int) -> dict[int, list[bytes]]:
    """Bytes left to the end of ``text`` -> the member's top-k next strings at that boundary."""
    vocab = member.vocab
    ids = list(member.tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids:
        return {}
    ids = ids[: max(1, member.context_window - 1)]
    lengths = [len(vocab.canon[i] or b"") if i < vocab.size else 0 for i in ids]
    total = sum(lengths)
    blocked = torch.tensor([c is None for c in vocab.canon])
    device = member.model.device
    with torch.inference_mode():
        logits = member.model(input_ids=torch.tensor([ids], device=device)).logits[0]
        logits = logits[:, : vocab.size].float().cpu().clone()
        logits[:, blocked[: logits.shape[1]]] = float("-inf")
        top = logits.topk(min(k, logits.shape[1]), dim=-1).indices.tolist()
    out: dict[int, list[bytes]] = {}
    done = 0
    for t, n in enumerate(lengths):
        done += n
        out[total - done] = [vocab.canon[i] or b"" for i in top[t]]
    return out


def topk_overlap(
    a: LoadedMember, b: LoadedMember, texts: Sequence[str], k: int = 10
) -> tuple[float | None, float | None, int]:
    """(mean top-k overlap, top-1 agreement, positions compared) over shared token boundaries."""
    overlaps: list[float] = []
    agree = 0
    for text in texts:
        if not text:
            continue
        sa, sb = _next_token_sets(a, text, k), _next_token_sets(b, text, k)
        for key in sa.keys() & sb.keys():
            ta, tb = sa[key], sb[key]
            if not ta or not tb:
                continue
            overlaps.append(len(set(ta) & set(tb)) / max(len(set(ta)), len(set(tb))))
            agree += ta[0] == tb[0]
    if not overlaps:
        return None, None, 0
    return sum(overlaps) / len(overlaps), agree / len(overlaps), len(overlaps)


def pair_facts(
    a: LoadedMember,
    b: LoadedMember,
    *,
    texts: Sequence[str] | None = None,
    k: int = 10,
    words: Sequence[str] | None = None,
    overlap: bool = True,
) -> VocabularyFacts:
    """Every vocabulary fact about one pair of loaded members."""
    texts = list(texts) if texts else list(SAMPLE_TEXTS)
    words = list(words) if words is not None else sample_words(texts)
    same = a.vocab.fingerprint == b.vocab.fingerprint
    share = 1.0 if same else identical_word_share(a.vocab, b.vocab, words)
    facts: dict[str, Any] = {}
    if overlap:
        ov, top1, n = topk_overlap(a, b, texts, k)
        facts = {"topk_overlap": ov, "top1_agreement": top1, "positions_compared": n}
    return VocabularyFacts(
        members=(a.name, b.name),
        vocab_sizes=(a.vocab.size, b.vocab.size),
        same_tokenizer=same,
        words_compared=len(words),
        identical_word_share=share,
        k=k,
        **facts,
    )
