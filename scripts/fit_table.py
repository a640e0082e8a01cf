"""The table of docs/engine.md "What pairs of large members need": the fit estimate of the
paper's 7-8B members and GaC's 70B members, from their public config numbers (built here, nothing
downloaded), in bfloat16, int8 and int4, and the 80 GB GPUs a pair needs.

    python scripts/fit_table.py
"""

from __future__ import annotations

import math

from transformers import LlamaConfig, MistralConfig, Qwen2Config

from unite_integrations.engine.fit import GIB, estimate_config

#: (name, config class, hidden, intermediate, layers, heads, kv heads, vocab)
MODELS = [
    ("Llama-3-8B", LlamaConfig, 4096, 14336, 32, 32, 8, 128256),
    ("Qwen2-7B", Qwen2Config, 3584, 18944, 28, 28, 4, 152064),
    ("Mistral-7B", MistralConfig, 4096, 14336, 32, 32, 8, 32000),
    ("Qwen2-72B", Qwen2Config, 8192, 29568, 80, 64, 8, 152064),
    ("Llama-3-70B", LlamaConfig, 8192, 28672, 80, 64, 8, 128256),
]
PAIRS = [("Llama-3-8B", "Qwen2-7B"), ("Llama-3-8B", "Mistral-7B"), ("Qwen2-72B", "Llama-3-70B")]
TOKENS = 8192  # KV cache held by the batch: e.g. 8 rows of 1k tokens
GPU_GIB = 80e9 / GIB * 0.9  # an 80 GB GPU, 10% kept for activations, logits and the allocator


def _configs() -> dict[str, object]:
    return {
        name: cls(
            hidden_size=h,
            intermediate_size=i,
            num_hidden_layers=n,
            num_attention_heads=a,
            num_key_value_heads=kv,
            vocab_size=v,
            tie_word_embeddings=False,
        )
        for name, cls, h, i, n, a, kv, v in MODELS
    }


def main() -> None:
    configs = _configs()
    rows = {}
    print("| member | params | weights bf16 | int8 | int4 | KV cache per 1k tokens (bf16) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, config in configs.items():
        e = {
            q: estimate_config(config, dtype="bfloat16", quantization=q, name=name)
            for q in (None, "int8", "int4")
        }
        rows[name] = e
        print(
            f"| {name} | {e[None].params / 1e9:.2f}B | {e[None].weights_bytes / GIB:.1f} GiB | "
            f"{e['int8'].weights_bytes / GIB:.1f} GiB | {e['int4'].weights_bytes / GIB:.1f} GiB | "
            f"{e[None].kv_bytes_per_1k / 2**20:.0f} MiB |"
        )
    print()
    print(f"| pair | cache ({TOKENS} tokens each) | 80 GB GPUs: bf16 | int8 | int4 |")
    print("|---|---:|---:|---:|---:|")
    for a, b in PAIRS:
        cells = []
        for q in (None, "int8", "int4"):
            need = [
                (rows[m][q].weights_bytes + rows[m][q].kv_bytes_per_1k * TOKENS / 1000) / GIB
                for m in (a, b)
            ]
            pooled = math.ceil(sum(need) / GPU_GIB)  # members spread with device="auto"
            apart = sum(math.ceil(n / GPU_GIB) for n in need)  # one actor per member, as GaC
            cells.append(f"{sum(need):.0f} GiB: {pooled} ({apart})")
        kv = sum(rows[m][None].kv_bytes_per_1k * TOKENS / 1000 for m in (a, b)) / GIB
        print(f"| {a} + {b} | {kv:.1f} GiB | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
