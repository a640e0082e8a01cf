"""What only a GPU can show, in one run that writes one JSON file (see scripts/gpu_check.sh).

Sections, each timed and recorded on its own (a failing one is recorded, the rest still run; the
file is rewritten after each, so a run cut short keeps what it finished):

* ``exactness``: on CUDA in float32, a single member's greedy answers equal its own ``generate``
  and a two-member ensemble's equal the reference rule (tests/reference.py), for two model
  families (a Llama and a Gemma-3 with sliding layers, the tests' tiny models);
* ``auto_dtype``: what ``dtype="auto"`` gives on this GPU;
* ``bf16_vs_fp32``: the same ensemble in bfloat16 and float32: how many answers are the same text,
  and where the others first differ;
* ``quantization``: an int8 member (bitsandbytes or torchao, whichever is installed) decodes as
  its own ``generate``;
* ``bench``: benchmarks/bench_gpu.py at real sizes (random weights, ~1B + ~3B, then Llama-3-8B's
  layout + ~3B): members alone, slowest, sum, ensemble full and gated, at batch 1 and 32, on one
  GPU and (with two) one per GPU and one member spread by ``device="auto"``; with the fit
  estimate of each member beside the bytes its weights took.

Nothing here downloads: the tiny models are built from the tests' corpus, the benchmark's members
from their configs.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", "450"))  # gpu_check.sh kills at 480
#: ``GPU_CHECK_DEVICE=cpu`` runs the sections but the benchmark on the CPU: a smoke run of this
#: script itself, so that a GPU's few minutes are not spent finding its bugs.
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda:0")


def _out_path(argv: list[str]) -> Path:
    if len(argv) > 1:
        return Path(argv[1])
    out = os.environ.get("OUT")
    return Path(out) / "gpu_check.json" if out else Path("gpu_check.json")


class _OnDevice:
    """A model whose inputs are moved to its device, for the CPU-minded oracles of the tests."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, ids: Any, **kw: Any) -> Any:
        return self._model(ids.to(self._model.device), **kw)

    def generate(self, **kw: Any) -> Any:
        import torch

        moved = {k: v.to(self._model.device) if torch.is_tensor(v) else v for k, v in kw.items()}
        return self._model.generate(**moved).cpu()


def _shim(engine: Any) -> Any:
    """The engine's members as the oracles take them, their models input-moving."""
    members = [
        SimpleNamespace(
            model=_OnDevice(m.model), tokenizer=m.tokenizer, encode_prompt=m.encode_prompt
        )
        for m in engine.members
    ]
    return SimpleNamespace(members=members, config=engine.config)


def _tiny() -> dict[str, Path]:
    from tiny_models import tiny_model_dir

    return {
        "llama": tiny_model_dir("bytelevel_bpe"),
        "gemma3": tiny_model_dir("sentencepiece_bpe", sliding_window=8),
    }


def exactness(n_prompts: int = 8, budget: int = 12) -> dict[str, Any]:
    from conftest import PROMPTS
    from reference import as_engine_text, reference_of, transformers_greedy

    from unite_integrations import UniTEEngine
    from unite_integrations.engine.config import MemberSpec

    dirs = _tiny()
    out: dict[str, Any] = {"single": {}, "mismatches": []}
    specs = {k: MemberSpec(source=str(d), device=DEVICE, dtype="float32") for k, d in dirs.items()}
    for family, spec in specs.items():
        with UniTEEngine([spec], top_k=5, check_invariants=True) as engine:
            member = _shim(engine).members[0]
            same = 0
            for prompt in PROMPTS[:n_prompts]:
                expected, _, _ = transformers_greedy(member, prompt, budget)
                got = engine.generate([prompt], max_new_tokens=budget)[0].text
                same += got == as_engine_text(expected)
                if got != as_engine_text(expected):
                    out["mismatches"].append({"family": family, "prompt": prompt, "got": got})
            out["single"][family] = [same, n_prompts]
    with UniTEEngine(list(specs.values()), top_k=5, check_invariants=True) as engine:
        shim = _shim(engine)
        same = 0
        for prompt in PROMPTS[:n_prompts]:
            expected = reference_of(shim, prompt, budget, k=5, window=32)
            got = engine.generate([prompt], max_new_tokens=budget)[0].text
            same += got == as_engine_text(expected.text)
            if got != as_engine_text(expected.text):
                out["mismatches"].append({"family": "ensemble", "prompt": prompt, "got": got})
        out["ensemble"] = [same, n_prompts]
    out["ok"] = not out["mismatches"]
    return out


def auto_dtype() -> dict[str, Any]:
    import torch

    from unite_integrations.engine.config import MemberSpec
    from unite_integrations.engine.loading import load_member

    model, _ = load_member(MemberSpec(source=str(_tiny()["llama"]), device=DEVICE))
    return {
        "bf16_supported": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "auto_gives": str(model.dtype).removeprefix("torch."),
    }


def bf16_vs_fp32(n_prompts: int = 16, budget: int = 16) -> dict[str, Any]:
    from conftest import PROMPTS

    from unite_integrations import UniTEEngine
    from unite_integrations.engine.config import MemberSpec

    dirs = list(_tiny().values())
    texts = {}
    for dtype in ("float32", "bfloat16"):
        specs = [MemberSpec(source=str(d), device=DEVICE, dtype=dtype) for d in dirs]
        with UniTEEngine(specs, top_k=5) as engine:
            results = engine.generate(PROMPTS[:n_prompts], max_new_tokens=budget)
            texts[dtype] = [r.text for r in results]
    diverge = []
    for a, b in zip(texts["float32"], texts["bfloat16"]):
        if a != b:
            diverge.append(
                next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            )
    return {
        "same_text": sum(a == b for a, b in zip(texts["float32"], texts["bfloat16"])),
        "prompts": n_prompts,
        "first_difference_chars": diverge,
    }


def quantization() -> dict[str, Any]:
    import importlib.util

    from conftest import PROMPTS
    from reference import as_engine_text, transformers_greedy

    from unite_integrations import UniTEEngine
    from unite_integrations.engine.config import MemberSpec

    backends = [m for m in ("bitsandbytes", "torchao") if importlib.util.find_spec(m)]
    if not backends:
        return {"skipped": "neither bitsandbytes nor torchao is installed"}
    spec = MemberSpec(source=str(_tiny()["llama"]), device=DEVICE, quantization="int8")
    with UniTEEngine([spec], top_k=5, check_invariants=True) as engine:
        member = _shim(engine).members[0]
        same = 0
        for prompt in PROMPTS[:6]:
            expected, _, _ = transformers_greedy(member, prompt, 12)
            same += engine.generate([prompt], max_new_tokens=12)[0].text == as_engine_text(expected)
        layer = engine.members[0].model.model.layers[0].mlp.down_proj.weight
    return {
        "installed": backends,
        "weight_type": type(layer).__name__,
        "same_as_generate": [same, 6],
    }


def bench(layouts: list[str], tokens: int, batches: list[int]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_gpu import run

    return run(layouts, False, tokens, batches, log=lambda s: print("  " + s, flush=True))


def _gpus() -> str:
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB)"


def main(argv: list[str]) -> int:
    import torch

    smoke = DEVICE == "cpu"
    if not torch.cuda.is_available() and not smoke:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing run.")
        return 0
    path = _out_path(argv)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    start = time.monotonic()
    report: dict[str, Any] = {
        "device": "cpu (smoke run)" if smoke else _gpus(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "sections": {},
    }
    # (name, function, seconds it needs at least to be started)
    sections = [
        ("exactness", exactness, 30),
        ("auto_dtype", auto_dtype, 10),
        ("bf16_vs_fp32", bf16_vs_fp32, 20),
        ("quantization", quantization, 20),
        ("bench_1b_3b", lambda: bench(["1b", "3b"], 32, [1, 32]), 120),
        ("bench_8b_3b", lambda: bench(["8b", "3b"], 32, [1, 32]), 150),
    ]
    if smoke:
        sections = sections[:4]
    for name, fn, needs in sections:
        left = BUDGET_S - (time.monotonic() - start)
        if left < needs:
            report["sections"][name] = {"skipped": f"{left:.0f} s left of the budget"}
            continue
        print(f"gpu_check: {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            result = fn()
        except Exception as e:
            result = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        result["seconds"] = round(time.monotonic() - t0, 1)
        report["sections"][name] = result
        print(f"gpu_check: {name} done in {result['seconds']} s", flush=True)
        if not smoke:
            torch.cuda.empty_cache()
        path.write_text(json.dumps(report, indent=1, default=str))
    report["seconds"] = round(time.monotonic() - start, 1)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"gpu_check: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
