"""A controlled case for "does the union combine knowledge?": invented facts, two tiny experts.

A demonstration, not part of the library: it trains models, which ``unite_integrations`` never
does. It lives beside ``tiny_models.py``, whose tokenizer builders it uses, and serves
``test_compat_synthetic.py`` and ``examples/when_ensembling_helps.py`` (which puts this folder on
``sys.path``).

Real model pairs cannot show the paper's central claim cleanly: their knowledge overlaps, and
their gap is rarely small. Here the knowledge is made to order:

* :func:`make_facts`: invented entities (``"Velunor"``) with two attributes each (a city, a
  colour), asked with question/answer templates. Entities are split into two halves.
* :func:`train_member`: a tiny ``LlamaForCausalLM`` with its own tokenizer (byte-level BPE as in
  GPT-2/SmolLM, or SentencePiece BPE with byte fallback as in Gemma: ``tiny_models``' builders,
  trained on the facts' text instead of its corpus), trained in-process on the
  facts of one half until it answers them; on the other half it can only guess. The trained
  directory is cached under the unite cache directory (like converted real models), keyed by
  everything that determines it, so the second run loads in a second.
* :func:`fact_task`: the facts as a :class:`~unite_integrations.compat.tasks.Task` (short
  answer, exact match; chance is one over the number of values), for ``unite eval``'s machinery
  and ``check_compatibility``.

``examples/when_ensembling_helps.py`` and ``docs/when_ensembling_helps.md`` use this to show both
sides: two compatible experts on different halves (the ensemble answers significantly more than
either), and an expert with a far weaker member (the check says incompatible; the ensemble is no
better than the expert).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from tiny_models import (
    deterministic_torch,
    train_bytelevel_bpe,
    train_sentencepiece_bpe,
    wrap_tokenizer,
)

from unite_integrations.compat.formatting import pyplot, save_figure
from unite_integrations.compat.report import CompatibilityReport
from unite_integrations.compat.results import DatasetResult, MachineInfo
from unite_integrations.compat.stats import PairedComparison, compare_paired
from unite_integrations.compat.tasks import Item, Task
from unite_integrations.errors import ConfigError

__all__ = [
    "ATTRIBUTES",
    "Case",
    "Demonstration",
    "Fact",
    "Family",
    "HalfScores",
    "fact_task",
    "make_facts",
    "run_demonstration",
    "train_member",
]

Family = Literal["bytelevel_bpe", "sentencepiece_bpe"]
_FAMILIES: tuple[str, ...] = ("bytelevel_bpe", "sentencepiece_bpe")
_VERSION = 3  # bump when training or the data change, so cached members are rebuilt

#: attribute -> (question template, possible values). Values have distinct first letters.
ATTRIBUTES: dict[str, tuple[str, tuple[str, ...]]] = {
    "city": (
        "In which city does {entity} live?",
        ("Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Rome", "Quito"),
    ),
    "colour": (
        "What is the favourite colour of {entity}?",
        ("red", "green", "blue", "black", "white", "yellow", "purple", "orange"),
    ),
}
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "s", "th", "l")


@dataclass(frozen=True)
class Fact:
    """One invented fact: ``entity``'s ``attribute`` is ``value``; ``half`` is 0 or 1."""

    entity: str
    attribute: str
    value: str
    half: int

    @property
    def question(self) -> str:
        return ATTRIBUTES[self.attribute][0].format(entity=self.entity)

    @property
    def id(self) -> str:
        return f"{self.entity}/{self.attribute}"


def _names(n: int, rng: random.Random) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 3)))]
        name = ("".join(syllables) + rng.choice(_CODAS)).capitalize()
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def make_facts(n_entities: int = 120, seed: int = 0) -> list[Fact]:
    """``n_entities`` invented entities, each with every attribute; the first half of the
    entities (in a seeded order) is half 0, the rest half 1. Values are drawn uniformly."""
    if n_entities < 2:
        raise ConfigError(f"n_entities must be >= 2, got {n_entities}")
    rng = random.Random(seed)
    facts: list[Fact] = []
    for i, entity in enumerate(_names(n_entities, rng)):
        half = 0 if i < n_entities // 2 else 1
        for attribute, (_, values) in ATTRIBUTES.items():
            facts.append(Fact(entity, attribute, rng.choice(values), half))
    return facts


def _prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def fact_task(facts: Sequence[Fact], *, name: str = "facts", title: str = "invented facts") -> Task:
    """The facts as a short-answer task (first line, exact match; chance = 1 / values)."""
    if not facts:
        raise ConfigError("no facts given")
    items = [Item(f.id, f.question, (f.value,)) for f in facts]
    n_values = min(len(v) for _, v in ATTRIBUTES.values())
    return Task(
        name=name,
        title=title,
        kind="text",
        split="given",
        items=items,
        max_new_tokens=6,
        stop=("\n",),
        chance=1.0 / n_values,
        render=lambda item: _prompt(item.question),
        available=len(items),
    )


# -- tokenizers ------------------------------------------------------------------------------------


def _corpus(facts: Sequence[Fact]) -> list[str]:
    """Tokenizer training text: every fact (both halves) and the unknown entities' questions,
    so neither vocabulary favours a half and known names are not split differently from unknown
    ones."""
    lines = [f"{_prompt(f.question)} {f.value}\n" for f in facts]
    lines += [
        _prompt(ATTRIBUTES[a][0].format(entity=e)) for e in _strangers(facts) for a in ATTRIBUTES
    ]
    return lines


def _strangers(facts: Sequence[Fact], n: int = 400) -> list[str]:
    """Invented names that are in no fact: what a member is taught not to know (see ``_train``)."""
    taken = {f.entity for f in facts}
    pool = _names(n + len(taken), random.Random(f"strangers-{len(facts)}"))
    return [name for name in pool if name not in taken][:n]


def _build_tokenizer(family: str, facts: Sequence[Fact]) -> Any:
    """``family``'s tokenizer (``tiny_models``' builder) trained on the facts' text."""
    text = _corpus(facts)
    if family == "bytelevel_bpe":  # GPT-2 / SmolLM: byte-level BPE, no BOS
        backend, roles = train_bytelevel_bpe(text, vocab_size=420)
    elif family == "sentencepiece_bpe":  # Gemma: spaces as "▁", BPE with byte fallback, BOS
        backend, roles = train_sentencepiece_bpe(text, vocab_size=300, chat_turns=False)
    else:
        raise ConfigError(f"family must be one of {', '.join(_FAMILIES)}, got {family!r}")
    return wrap_tokenizer(backend, roles, model_max_length=128)


# -- training --------------------------------------------------------------------------------------


def _rows(tok: Any, facts: Sequence[Fact]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) per fact: the prompt encoded as the engine encodes it (special
    tokens on), the answer as its continuation, ending in the newline and EOS."""
    answers = {
        v: [*tok(f" {v}\n", add_special_tokens=False)["input_ids"], tok.eos_token_id]
        for _, values in ATTRIBUTES.values()
        for v in values
    }
    return [
        (list(tok(_prompt(f.question), add_special_tokens=True)["input_ids"]), answers[f.value])
        for f in facts
    ]


def _batch(rows: Sequence[tuple[list[int], list[int]]], pad: int) -> tuple[Any, Any, Any]:
    """Padded (input ids, attention mask, labels); the loss is on the answer tokens only."""
    import torch

    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (p, a) in enumerate(rows):
        seq = p + a
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        labels[r, len(p) : len(seq)] = torch.tensor(a)
    return ids, mask, labels


def _train(
    model: Any, tok: Any, facts: Sequence[Fact], strangers: Sequence[str], steps: int, lr: float
) -> None:
    """Full-batch AdamW on the member's facts, plus at every step as many questions about
    strangers, each answered with a value drawn at random: the member learns that an entity it
    has not seen could have any value (a spread distribution) instead of guessing confidently.
    Without this, tiny models answer unknown entities with ~0.9 confidence, and a confident wrong
    member outvotes a right one (measured: the union then recovers only half of the other
    member's facts)."""
    import torch

    known = _rows(tok, facts)
    questions = [
        Fact(name, attribute, values[0], -1)
        for name in strangers
        for attribute, (_, values) in ATTRIBUTES.items()
    ]
    stranger_prompts = [p for p, _ in _rows(tok, questions)]
    answers = {
        a: [r[1] for r in _rows(tok, [Fact("x", a, v, -1) for v in values])]
        for a, (_, values) in ATTRIBUTES.items()
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        picks = torch.randint(0, len(questions), (max(1, len(known) // 2),)).tolist()
        draws = torch.randint(0, 1 << 30, (len(picks),)).tolist()
        noise = [
            (
                stranger_prompts[q],
                answers[questions[q].attribute][d % len(answers[questions[q].attribute])],
            )
            for q, d in zip(picks, draws)
        ]
        ids, mask, labels = _batch([*known, *noise], tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def _key(**parts: Any) -> str:
    blob = json.dumps({"version": _VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_member(
    family: Family,
    facts: Sequence[Fact],
    *,
    half: int | None,
    steps: int = 300,
    lr: float = 5e-3,
    seed: int = 0,
    threads: int = 1,
    cache_dir: str | Path | None = None,
) -> Path:
    """A tiny model of ``family`` trained on the facts of ``half`` (``None``: all facts) for
    ``steps`` full-batch AdamW steps; its directory (cached, loadable as a member source).

    The tokenizer is trained on every fact's text; the model sees only its half's answers.
    """
    from unite_integrations.engine.loading import default_cache_dir

    if family not in _FAMILIES:
        raise ConfigError(f"family must be one of {', '.join(_FAMILIES)}, got {family!r}")
    if steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}")
    if half not in (None, 0, 1):
        raise ConfigError(f"half must be 0, 1 or None, got {half!r}")
    known = [f for f in facts if half is None or f.half == half]
    if not known:
        raise ConfigError(f"no facts in half {half}")
    key = _key(
        family=family,
        facts=[(f.entity, f.attribute, f.value, f.half) for f in facts],
        half=half,
        steps=steps,
        lr=lr,
        seed=seed,
    )
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / "synthetic-facts" / f"{family}-half{'all' if half is None else half}-{key}"
    if (out / "config.json").exists() and (out / "unite-synthetic.json").exists():
        return out

    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = _build_tokenizer(family, facts)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with deterministic_torch(seed, threads):
        model = LlamaForCausalLM(config)
        if steps:
            _train(model, tok, known, _strangers(facts), steps, lr)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "unite-synthetic.json").write_text(
            json.dumps({"family": family, "half": half, "steps": steps, "facts": len(known)}),
            encoding="utf-8",
        )
        if out.exists():  # a concurrent build finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- the demonstration -----------------------------------------------------------------------------


class HalfScores(BaseModel):
    """A system's correct answers on each half of the facts."""

    system: str
    half0: int
    half1: int
    n_half0: int
    n_half1: int


class Case(BaseModel):
    """One pair of members on every fact: each alone, the ensemble, and the check's verdict."""

    name: str
    description: str
    members: list[str]
    result: DatasetResult = Field(description="Each member alone and the ensemble, every fact.")
    halves: list[HalfScores]
    versus_members: list[PairedComparison] = Field(
        description="The ensemble against each member alone, paired on the same facts."
    )
    check: CompatibilityReport = Field(
        description="check_compatibility on the calibration facts (both halves alike)."
    )

    def versus(self, member: str) -> PairedComparison:
        return next(c for c in self.versus_members if c.second == member)


class Demonstration(BaseModel):
    """Both cases of :func:`run_demonstration`, with the settings and the time they took."""

    facts: int
    entities: int
    values_per_attribute: int
    steps: int
    weak_steps: int
    calibration_items: int
    cases: list[Case]
    machine: MachineInfo
    seconds: float

    def case(self, name: str) -> Case:
        return next(c for c in self.cases if c.name == name)

    def markdown(self) -> str:
        """The measured tables (accuracy with Wilson intervals; paired comparisons; verdicts)."""
        lines: list[str] = []
        for c in self.cases:
            lines += [
                f"**{c.description}** ({c.result.n} facts, chance {100 * c.result.chance:.1f}%)",
                "",
                "| system | half 0 | half 1 | all facts, % [95% CI] |",
                "|---|---|---|---|",
            ]
            for r, h in zip(c.result.results, c.halves):
                lines.append(
                    f"| {r.system} | {h.half0}/{h.n_half0} | {h.half1}/{h.n_half1} | "
                    f"{r.accuracy_text()} |"
                )
            lines += ["", "| ensemble vs | ensemble only | member only | difference, paired |"]
            lines.append("|---|---|---|---|")
            for p in c.versus_members:
                lines.append(f"| {p.second} | {p.first_only} | {p.second_only} | {p.text()} |")
            lines += [
                "",
                f"check_compatibility ({c.check.task}, {c.check.n_items} facts): "
                f"**{c.check.verdict}**; recommendation: "
                + (
                    "ensemble " + " + ".join(c.check.recommendation.members)
                    if c.check.recommendation.use_ensemble
                    else f"use {c.check.recommendation.primary} alone"
                ),
                "",
            ]
        m = self.machine
        lines.append(
            f"{self.facts} facts ({self.entities} entities x {len(ATTRIBUTES)} attributes, "
            f"{self.values_per_attribute} values each), members trained {self.steps} steps "
            f"(the weak one {self.weak_steps}); {self.seconds:.0f} s in all (training included "
            f"unless cached) on {m.processor}, {m.cpus} CPUs, torch {m.torch} "
            f"({m.torch_threads} threads)."
        )
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Accuracy per system and case, with Wilson whiskers and chance as a dashed line."""
        fig, axes = pyplot().subplots(1, len(self.cases), figsize=(4.6 * len(self.cases), 3.8))
        for ax, c in zip(axes if len(self.cases) > 1 else [axes], self.cases):
            rs = c.result.results
            ys = [100 * r.accuracy for r in rs]
            lo = [100 * (r.accuracy - (r.interval.low if r.interval else r.accuracy)) for r in rs]
            hi = [100 * ((r.interval.high if r.interval else r.accuracy) - r.accuracy) for r in rs]
            colours = ["#4c72b0", "#dd8452", "#55a868"][: len(rs)]
            bars = ax.bar(range(len(rs)), ys, color=colours, yerr=[lo, hi], capsize=3)
            ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
            ax.axhline(100 * c.result.chance, color="grey", linestyle="dashed", linewidth=1)
            ax.set_xticks(range(len(rs)))
            ax.set_xticklabels([r.system.replace(", ", "\n") for r in rs], fontsize=7)
            ax.set_ylim(0, 105)
            ax.set_title(f"{c.description}\ncheck: {c.check.verdict}", fontsize=9)
        axes_list = axes if len(self.cases) > 1 else [axes]
        axes_list[0].set_ylabel("facts answered (%), Wilson 95% CI")
        return save_figure(fig, path, dpi=110)


def _halves(result: DatasetResult, facts: Sequence[Fact]) -> list[HalfScores]:
    out = []
    n0 = sum(f.half == 0 for f in facts)
    for r in result.results:
        h0 = sum(ok for ok, f in zip(r.item_correct, facts) if f.half == 0)
        h1 = sum(ok for ok, f in zip(r.item_correct, facts) if f.half == 1)
        out.append(
            HalfScores(system=r.system, half0=h0, half1=h1, n_half0=n0, n_half1=len(facts) - n0)
        )
    return out


def _balanced_sample(facts: list[Fact], n: int | None, seed: int) -> list[int]:
    """Indices of ``n`` facts (all where ``None``), as many from each half, seeded, in order."""
    halves = [[i for i, f in enumerate(facts) if f.half == h] for h in (0, 1)]
    if n is None:
        return sorted(halves[0] + halves[1])
    if n < 2:
        raise ConfigError(f"calibration_items must be at least 2 (one per half), got {n}")
    rng = random.Random(seed)
    return sorted(i for h in halves for i in rng.sample(h, min(n // 2, len(h))))


def run_demonstration(
    *,
    n_entities: int = 120,
    steps: int = 200,
    weak_steps: int = 15,
    calibration_items: int | None = None,
    seed: int = 0,
    threads: int = 1,
    top_k: int = 10,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> Demonstration:
    """Train (or load from the cache) three tiny members and measure two cases on every fact:

    * **two experts**: a byte-level-BPE member trained on half 0 and a SentencePiece-BPE member
      trained on half 1 (different vocabularies, different knowledge);
    * **expert + weak member**: the same half-0 expert with a SentencePiece-BPE member trained
      ``weak_steps`` steps on the same half (near chance).

    In each case each member alone and the greedy UniTE ensemble answer every fact, the ensemble is
    compared with each member paired on the facts, and ``check_compatibility`` runs on a seeded
    sample of ``calibration_items`` facts, half from each half (measured mode, short answers;
    ``None``, the default: every fact). A sample that favours one half favours its expert: on 60
    facts drawn at random the two experts' scores differed by 10-15% from that alone, and the check's
    10% gap rule then measured the sample, and flipped with the float rounding of the thread count.
    """
    import time

    from unite_integrations.compat.check import check_compatibility
    from unite_integrations.compat.evaluate import ENSEMBLE, evaluate_task
    from unite_integrations.engine.config import MemberSpec
    from unite_integrations.engine.engine import UniTEEngine

    t0 = time.perf_counter()
    facts = make_facts(n_entities, seed)
    task = fact_task(facts)
    sample = _balanced_sample(facts, calibration_items, seed + 1)
    calibration = fact_task([facts[i] for i in sample], name="facts-sample", title="mixed facts")

    def member(family: Family, half: int, n_steps: int) -> Path:
        return train_member(
            family, facts, half=half, steps=n_steps, seed=seed, threads=threads, cache_dir=cache_dir
        )

    expert_a = member("bytelevel_bpe", 0, steps)
    expert_b = member("sentencepiece_bpe", 1, steps)
    weak = member("sentencepiece_bpe", 0, weak_steps)
    a = MemberSpec(source=str(expert_a), name="A: byte BPE, half 0")
    b = MemberSpec(source=str(expert_b), name="B: SentencePiece BPE, half 1")
    w = MemberSpec(source=str(weak), name=f"W: SentencePiece BPE, half 0, {weak_steps} steps")
    cases = []
    for name, description, specs in (
        ("experts", "two experts on different halves", [a, b]),
        ("control", "an expert and a weak member", [a, w]),
    ):
        engine = UniTEEngine(specs, top_k=top_k, cache_dir=cache_dir)
        result = evaluate_task(engine, task, batch_size=64, progress=progress)
        ens = result.result(ENSEMBLE)
        versus = [
            compare_paired(ens.item_correct, r.item_correct, names=(ENSEMBLE, r.system))
            for r in result.results
            if r.kind == "member"
        ]
        check = check_compatibility(
            engine, task=calibration, with_ensemble=True, progress=progress, batch_size=64
        )
        cases.append(
            Case(
                name=name,
                description=description,
                members=engine.member_names,
                result=result,
                halves=_halves(result, facts),
                versus_members=versus,
                check=check,
            )
        )
    return Demonstration(
        facts=len(facts),
        entities=n_entities,
        values_per_attribute=min(len(v) for _, v in ATTRIBUTES.values()),
        steps=steps,
        weak_steps=weak_steps,
        calibration_items=len(sample),
        cases=cases,
        machine=MachineInfo.current(),
        seconds=time.perf_counter() - t0,
    )
