"""GPU benchmark, one command: real-size members (random weights), ensemble vs its members.

    python benchmarks/bench_gpu.py                     # a ~1B Llama + a ~3B Gemma-3 layout, bf16
    python benchmarks/bench_gpu.py --layouts 8b,3b     # Llama-3-8B's layout + the ~3B Gemma-3
    python benchmarks/bench_gpu.py --small             # tiny layouts on the CPU (a smoke run)

The members keep the offline pair's tokenizers and vocabulary sizes (SmolLM2's 49152, Gemma-3's
262144) with random weights, saved once to a scratch folder. Where the pair's conversions are not
in the cache (a bare GPU machine), the tests' tiny tokenizers stand in, with the same vocabulary
sizes: the embedding and output layers, the top-k and the union then cost what they cost with the
real tokenizers. Nothing is downloaded. On a GPU the random weights are drawn on the GPU.

Configurations: both members on one device; where there are two GPUs, one per device, and the
second member spread over both by ``device="auto"``. For each batch size it prints decode tokens/s
of each member alone (``member_engine``), the slowest member, the sum of the members' times, and
the ensemble full and gated. Random weights give flat distributions, so a realistic gate (0.9)
rarely fires; ``gate=0.0`` (always the primary) shows the gated ceiling. Each configuration also
records the fit estimate of every member beside the memory its weights took on the GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from unite_integrations import UniTEEngine
from unite_integrations.engine.config import MemberSpec
from unite_integrations.engine.loading import member_estimate

CACHE = Path.home() / ".cache/unite-integrations/models"
PAIR = {"llama": "SmolLM2-135M-Instruct.Q4_1-*", "gemma3": "gemma-3-270m-q4_k_m-*"}
VOCAB = {"llama": 49152, "gemma3": 262144}
TINY_FAMILY = {"llama": "bytelevel_bpe", "gemma3": "sentencepiece_bpe"}
LAYOUTS: dict[str, tuple[str, dict[str, Any]]] = {
    # ~1B Llama (Llama-3.2-1B-like)
    "1b": (
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
        ),
    ),
    # ~3B Gemma-3 (gemma-3-4b's text tower minus layers)
    "3b": (
        "gemma3",
        dict(
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=26,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
        ),
    ),
    # Llama-3-8B's layout (with SmolLM2's vocabulary: 7.5B parameters)
    "8b": (
        "llama",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
        ),
    ),
}
SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


def _base(kind: str) -> tuple[Any, Path | Any]:
    """(config, tokenizer source): the pair's conversion if cached, else a tiny tokenizer."""
    found = sorted(CACHE.glob(PAIR[kind]))
    if found:
        return transformers.AutoConfig.from_pretrained(found[0]), found[0]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import build_tokenizer  # the tests' tokenizers: offline, deterministic

    tok = build_tokenizer(TINY_FAMILY[kind])
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if kind == "llama":
        return transformers.LlamaConfig(vocab_size=VOCAB[kind], **ids), tok
    return transformers.Gemma3TextConfig(vocab_size=VOCAB[kind], sliding_window=512, **ids), tok


def build(layout: str, small: bool, out: Path) -> Path:
    """A random-weight member of ``layout`` with the pair's tokenizer and vocabulary."""
    kind, sizes = LAYOUTS[layout]
    config, tok_source = _base(kind)
    for k, v in (SMALL if small else sizes).items():
        setattr(config, k, v)
    if getattr(config, "layer_types", None):
        n, pattern = config.num_hidden_layers, config.layer_types
        config.layer_types = [pattern[i % len(pattern)] for i in range(n)]
    torch.manual_seed(0)
    where = "cuda" if torch.cuda.is_available() and not small else "cpu"
    with torch.device(where):  # drawing 8B random numbers on a CPU takes minutes
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    dest = out / layout
    model.save_pretrained(dest)
    del model
    if isinstance(tok_source, Path):
        for f in tok_source.iterdir():
            if f.name.startswith(("tokenizer", "chat_template", "generation_config")):
                shutil.copy(f, dest / f.name)
    else:
        tok_source.save_pretrained(dest)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return dest


def rate(engine: UniTEEngine, batch: int, n: int, **kw: object) -> float:
    """Decode tokens/s at this batch size (one warm-up call first)."""
    prompts = [f"Item {i}: the quick brown fox" for i in range(batch)]
    engine.generate(prompts[:1], max_new_tokens=2, min_new_tokens=2, **kw)
    t0 = time.perf_counter()
    out = engine.generate(prompts, max_new_tokens=n, min_new_tokens=n, **kw)
    return sum(r.usage.output_tokens for r in out) / (time.perf_counter() - t0)


def placements(gpus: int, small: bool) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, per-member MemberSpec fields): one device; one per GPU; the second spread."""
    if small or not gpus:
        return [("cpu", [{"device": "cpu"}, {"device": "cpu"}])]
    out = [("one GPU", [{"device": "cuda:0"}, {"device": "cuda:0"}])]
    if gpus >= 2:
        out.append(("one per GPU", [{"device": "cuda:0"}, {"device": "cuda:1"}]))
        out.append(("second spread", [{"device": "cuda:0"}, {"device": "auto"}]))
    return out


def _fit_rows(engine: UniTEEngine, specs: list[MemberSpec], cache: str) -> list[dict[str, Any]]:
    """Each member's fit estimate of its weights beside what its weights take on the device."""
    rows = []
    for spec, member in zip(specs, engine.members):
        est = member_estimate(spec, Path(cache))
        model = member.model
        measured = sum(p.numel() * p.element_size() for p in model.parameters())
        measured += sum(b.numel() * b.element_size() for b in model.buffers())
        rows.append(
            {
                "member": member.name,
                "dtype": str(model.dtype).removeprefix("torch."),
                "estimate_weights_bytes": est.weights_bytes,
                "measured_weights_bytes": measured,
                "kv_bytes_per_1k": est.kv_bytes_per_1k,
            }
        )
    return rows


def run(
    layouts: list[str], small: bool, tokens: int, batches: list[int], log: Any = print
) -> dict[str, Any]:
    """Every placement x batch size; returns the rows (tokens/s) and the fit rows."""
    gpus = torch.cuda.device_count()
    dtype = "float32" if small or not gpus else "bfloat16"
    rows: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [build(layout, small, Path(tmp)) for layout in layouts]
        for label, fields in placements(gpus, small):
            specs = [MemberSpec(source=str(d), dtype=dtype, **f) for d, f in zip(dirs, fields)]
            engine = UniTEEngine(specs, cache_dir=tmp)
            fits.append({"placement": label, "members": _fit_rows(engine, specs, tmp)})
            alone = [engine.member_engine(i) for i in range(len(specs))]
            for b in batches:
                m = [rate(e, b, tokens) for e in alone]
                row = {
                    "placement": label,
                    "layouts": layouts,
                    "dtype": dtype,
                    "batch": b,
                    "members": m,
                    "slowest": min(m),
                    "sum": 1 / sum(1 / x for x in m),  # both members' times added
                    "full": rate(engine, b, tokens),
                    "gated_0.9": rate(engine, b, tokens, gate=0.9),
                    "gated_0.0": rate(engine, b, tokens, gate=0.0),
                }
                rows.append(row)
                log(
                    f"{label} ({'+'.join(layouts)}) batch {b}: members "
                    + "/".join(f"{x:.1f}" for x in m)
                    + f" tok/s, slowest {row['slowest']:.1f}, sum {row['sum']:.1f}, ensemble "
                    f"full {row['full']:.1f}, gated 0.9 {row['gated_0.9']:.1f}, "
                    f"gated 0.0 {row['gated_0.0']:.1f}"
                )
            engine.close()
            del engine, alone
            if gpus:
                torch.cuda.empty_cache()
    return {"rows": rows, "fit": fits}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny layouts on the CPU")
    ap.add_argument("--layouts", default="1b,3b", help=f"two of {', '.join(LAYOUTS)}")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    result = run(
        args.layouts.split(","),
        args.small,
        args.tokens,
        [int(x) for x in args.batches.split(",")],
        log=lambda s: print(s, flush=True),
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
