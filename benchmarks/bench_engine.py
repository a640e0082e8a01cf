"""Ensemble speed against its members, measured side by side in one run (the machine is noisy).

Prints two ratios on the real offline pair at batch 1 (greedy, fixed lengths, END disabled):

1. ensemble time per token / (sum of each member's own time per token with ``generate``), at
   128 new tokens. Target: <= 1.10. Each member does the same forward work inside the ensemble, so
   this ratio is the overhead of the union step, the feed-back and re-tokenization.
2. paper-style time per token / ours, at 256 new tokens, where the paper-style run re-encodes the
   second member's whole text every step (only the primary keeps a KV cache), as the paper's code.

Usage: ``python benchmarks/bench_engine.py [--tokens 128] [--long-tokens 256] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from unite_integrations import UniTEEngine
from unite_integrations.engine import batch as batch_module
from unite_integrations.engine.sequences import MemberBatch

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain step by step how a bicycle works, covering every part.",
    "The history of the printing press begins",
]


def member_generate_time(member: Any, prompt: str, n: int) -> float:
    ids = member.tokenizer(prompt, return_tensors="pt").to(member.model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = member.model.generate(
            **ids,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=member.pad_id,
        )
    elapsed = time.perf_counter() - start
    assert out.shape[1] - ids["input_ids"].shape[1] == n
    return elapsed / n


def ensemble_time(engine: UniTEEngine, prompt: str, n: int) -> float:
    start = time.perf_counter()
    r = engine.generate([prompt], max_new_tokens=n, min_new_tokens=n)[0]
    elapsed = time.perf_counter() - start
    assert r.usage.output_tokens == n, r.usage
    return elapsed / n


class ReencodingBatch(MemberBatch):
    """The paper's non-primary member: no KV cache kept, the whole sequence re-encoded each step."""

    def advance(self, updates: list[Any]) -> None:
        full = []
        for r, u in enumerate(updates):
            keep, new = u if u is not None else (len(self.ids[r]), [])
            full.append((0, self.ids[r][:keep] + new))
        self.cache = None
        self.mask = self.mask[:, :0]
        for cols in self.cols:
            cols.clear()
        super().advance(full)


def paper_style_time(engine: UniTEEngine, prompt: str, n: int) -> float:
    second = engine.members[1].model
    original = batch_module.MemberBatch

    def factory(model: Any, prompts: Any, pad_id: int, *rest: Any) -> MemberBatch:
        cls = ReencodingBatch if model is second else original
        return cls(model, prompts, pad_id, *rest)

    batch_module.MemberBatch = factory  # type: ignore[assignment,misc]
    try:
        return ensemble_time(engine, prompt, n)
    finally:
        batch_module.MemberBatch = original  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--long-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="passes over the prompts")
    parser.add_argument("--members", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    args = parser.parse_args()

    engine = UniTEEngine(args.members, top_k=10, prefix_cache=0)  # the decoding alone, no reuse
    names = engine.member_names
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; members: {', '.join(names)}"
    )
    engine.generate(["warm up"], max_new_tokens=4)  # first-call costs out of the measurement
    for m in engine.members:
        member_generate_time(m, "warm up", 4)

    ratios, own_sums, ens_times = [], [], []
    for _ in range(args.repeats):
        for prompt in PROMPTS:  # interleaved, so drift in machine load hits both sides alike
            own = [member_generate_time(m, prompt, args.tokens) for m in engine.members]
            ens = ensemble_time(engine, prompt, args.tokens)
            ratios.append(ens / sum(own))
            own_sums.append(sum(own))
            ens_times.append(ens)
            print(
                f"  {args.tokens} tokens: members "
                + " + ".join(f"{t * 1e3:.1f}" for t in own)
                + f" = {sum(own) * 1e3:.1f} ms/token; ensemble {ens * 1e3:.1f} ms/token; "
                f"ratio {ens / sum(own):.3f}"
            )
    print(
        f"ensemble / sum of members' generate, {args.tokens} tokens, batch 1: "
        f"median ratio {statistics.median(ratios):.3f} "
        f"({statistics.median(ens_times) * 1e3:.1f} vs "
        f"{statistics.median(own_sums) * 1e3:.1f} ms/token)"
    )

    long_ratios = []
    for prompt in PROMPTS[: max(1, args.repeats)]:
        ours = ensemble_time(engine, prompt, args.long_tokens)
        paper = paper_style_time(engine, prompt, args.long_tokens)
        long_ratios.append(paper / ours)
        print(
            f"  {args.long_tokens} tokens: ours {ours * 1e3:.1f} ms/token, "
            f"paper-style {paper * 1e3:.1f} ms/token, ratio {paper / ours:.2f}"
        )
    print(
        f"paper-style (second member re-encodes every step) / ours, {args.long_tokens} tokens: "
        f"median ratio {statistics.median(long_ratios):.2f}"
    )


if __name__ == "__main__":
    main()
