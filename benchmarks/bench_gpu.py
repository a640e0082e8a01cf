"""GPU benchmark, one command: real-size members (random weights), ensemble vs its members.

    python benchmarks/bench_gpu.py            # a ~1B Llama layout + a ~3B Gemma-3 layout, bf16
    python benchmarks/bench_gpu.py --small    # tiny layouts on the CPU (a smoke run)

The members keep the offline pair's tokenizers and vocabulary sizes (SmolLM2's 49152, Gemma-3's
262144) with random weights, saved once to a scratch folder. Configurations: both members on one
device and, where there are two devices, one per device. For batch 1 and 32 it prints decode
tokens/s of each member alone (``member_engine``), the slowest member, the sum of the members'
times, and the ensemble full and gated. Random weights give flat distributions, so a realistic
gate (0.9) rarely fires; ``gate=0.0`` (always the primary) shows the gated ceiling.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import transformers

from unite_integrations import UniTEEngine
from unite_integrations.engine.config import MemberSpec

CACHE = Path.home() / ".cache/unite-integrations/models"
PAIR = {"llama": "SmolLM2-135M-Instruct.Q4_1-*", "gemma3": "gemma-3-270m-q4_k_m-*"}
LAYOUT = {  # ~1B Llama (Llama-3.2-1B-like), ~3B Gemma-3 (gemma-3-4b's text tower minus layers)
    "llama": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
    ),
    "gemma3": dict(
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
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


def build(kind: str, small: bool, out: Path) -> Path:
    """A random-weight member with the pair's tokenizer and vocabulary, saved under ``out``."""
    src = next(CACHE.glob(PAIR[kind]))
    config = transformers.AutoConfig.from_pretrained(src)
    for k, v in (SMALL if small else LAYOUT[kind]).items():
        setattr(config, k, v)
    if hasattr(config, "layer_types") and config.layer_types:
        n, pattern = config.num_hidden_layers, config.layer_types
        config.layer_types = [pattern[i % len(pattern)] for i in range(n)]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    dest = out / kind
    model.save_pretrained(dest)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "generation_config")):
            shutil.copy(f, dest / f.name)
    return dest


def rate(engine: UniTEEngine, batch: int, n: int, **kw: object) -> float:
    """Decode tokens/s at this batch size (one warm-up call first)."""
    prompts = [f"Item {i}: the quick brown fox" for i in range(batch)]
    engine.generate(prompts[:1], max_new_tokens=2, min_new_tokens=2, **kw)
    t0 = time.perf_counter()
    out = engine.generate(prompts, max_new_tokens=n, min_new_tokens=n, **kw)
    return sum(r.usage.output_tokens for r in out) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny layouts on the CPU")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    gpus = torch.cuda.device_count()
    devices = [["cpu", "cpu"]] if args.small or not gpus else [["cuda:0", "cuda:0"]]
    if gpus >= 2 and not args.small:
        devices.append(["cuda:0", "cuda:1"])
    dtype = "float32" if devices[0][0] == "cpu" else "bfloat16"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [build(k, args.small, Path(tmp)) for k in ("llama", "gemma3")]
        for devs in devices:
            specs = [MemberSpec(source=str(d), device=dv, dtype=dtype) for d, dv in zip(dirs, devs)]
            engine = UniTEEngine(specs, cache_dir=tmp)
            alone = [engine.member_engine(i) for i in range(2)]
            for b in [int(x) for x in args.batches.split(",")]:
                m = [rate(e, b, args.tokens) for e in alone]
                row = {
                    "devices": devs,
                    "batch": b,
                    "members": m,
                    "slowest": min(m),
                    "sum": 1 / sum(1 / x for x in m),  # both members' times added
                    "full": rate(engine, b, args.tokens),
                    "gated_0.9": rate(engine, b, args.tokens, gate=0.9),
                    "gated_0.0": rate(engine, b, args.tokens, gate=0.0),
                }
                rows.append(row)
                print(
                    f"{'+'.join(devs)} batch {b}: members {m[0]:.1f}/{m[1]:.1f} tok/s, "
                    f"slowest {row['slowest']:.1f}, sum {row['sum']:.1f}, ensemble full "
                    f"{row['full']:.1f}, gated 0.9 {row['gated_0.9']:.1f}, "
                    f"gated 0.0 {row['gated_0.0']:.1f}",
                    flush=True,
                )
            engine.close()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
