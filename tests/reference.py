"""A slow, literal implementation of the UniTE rule, to check the engine against.

No KV cache (every step re-encodes each member's whole sequence), Python loops over the union,
dictionaries keyed by strings instead of precomputed maps, and in case (b) of the feed-back step a
full re-tokenization of the member's generated text. It shares with the engine only the byte view
of a vocabulary (``Vocab.canon``/``exact``/``encode``), which has its own property tests.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from unite_integrations.engine.vocab import Vocab

END = "END"


def _candidates(logits: list[float], vocab: Vocab, k: int) -> list[tuple[Any, int, float]]:
    """A member's top-k (string, id, logit); all end tokens are one END entry at their max."""
    entries: list[tuple[float, Any, int]] = []
    for t, b in enumerate(vocab.canon):
        if b is not None:
            entries.append((logits[t], b, t))
    end_logit = max(logits[t] for t in vocab.end_ids)
    entries.append((end_logit, END, -1))
    entries.sort(key=lambda e: -e[0])
    return [(s, t, z) for z, s, t in entries[:k]]


def _score(
    member: int, u: Any, logits: list[float], vocab: Vocab, proposals: list[tuple[Any, int, float]]
) -> float:
    own = [z for s, _, z in proposals if s == u]
    if own:
        return max(own)
    if u == END:
        return max(logits[t] for t in vocab.end_ids)
    if u in vocab.exact:
        return logits[vocab.exact[u]]
    return logits[vocab.encode(u)[0]]  # the first sub-token, tokenized in context


def reference_generate(
    models: list[Any],
    vocabs: list[Vocab],
    prompts: list[list[int]],
    weights: list[float],
    k: int,
    max_new_tokens: int,
) -> bytes:
    """Greedy UniTE for one row; ``prompts[i]`` is member i's prompt ids. Returns the text."""
    gen = [list[int]() for _ in models]
    text = b""
    total = sum(weights)
    weights = [w / total for w in weights]
    for _ in range(max_new_tokens):
        logits = []
        for model, p, g in zip(models, prompts, gen):
            with torch.no_grad():
                out = model(torch.tensor([p + g])).logits[0, -1].float()
            logits.append(out.tolist())
        proposals = [_candidates(z, v, k) for z, v in zip(logits, vocabs)]
        union: list[Any] = []
        for props in proposals:
            for s, _, _ in props:
                if s not in union:
                    union.append(s)
        p = [0.0] * len(union)
        primary_scores = []
        for i, (z, v) in enumerate(zip(logits, vocabs)):
            scores = [_score(i, u, z, v, proposals[i]) for u in union]
            if i == 0:
                primary_scores = scores
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            norm = sum(exps)
            for n in range(len(union)):
                p[n] += weights[i] * exps[n] / norm
        best = max(p)
        tied = [n for n in range(len(union)) if p[n] == best]
        choice = union[max(tied, key=lambda n: (primary_scores[n], -n))]
        if choice == END:
            break
        for i, v in enumerate(vocabs):
            own = [t for s, t, _ in proposals[i] if s == choice]
            if own:
                gen[i].append(own[0])
            elif choice in v.exact:
                gen[i].append(v.exact[choice])
            else:  # (b): re-tokenize the member's whole generated text
                gen[i] = v.encode(text + choice)
        text += choice
        for v, g in zip(vocabs, gen):
            assert v.bytes_of(g) == text
    return text


def transformers_greedy(member: Any, prompt: str, max_new_tokens: int) -> tuple[str, bool]:
    """(text, stopped) from the member's own ``generate``, told the same rules as the engine:
    stop at any of the member's end tokens, and never emit another special token."""
    vocab = member.vocab
    ends = set(vocab.end_ids)
    never = [t for t, c in enumerate(vocab.canon) if c is None and t not in ends]
    ids = member.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = member.model.generate(
            **ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=member.pad_id,
            eos_token_id=vocab.end_ids,
            suppress_tokens=never,
        )
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    stopped = any(t in ends for t in new)
    if stopped:
        new = new[: min(n for n, t in enumerate(new) if t in ends)]
    return vocab.bytes_of(new).decode("utf-8", errors="replace"), stopped
