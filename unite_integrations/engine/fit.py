"""Will these members fit? Bytes of weights and KV cache from a model's config, before any weight.

A 7B member in float32 takes 28 GB and a 70B member in bfloat16 140 GB: loading either on a
device too small used to end in an out-of-memory error halfway through reading the weights. The
estimate here needs only the model's config: the parameters are counted on torch's ``meta``
device (shapes, no storage), so it is exact for every architecture transformers builds, and the
KV cache follows from the attention shapes. ``loading.load_member`` refuses a member whose weights
plus 1,000 tokens of cache exceed the free memory of its device(s), naming the numbers and the
fixes; ``loading.estimate_fit`` prints the same figures for a whole ensemble.

What is counted:

* weights: every parameter and buffer at the member's dtype; with quantization the linear layers
  of the decoder (not the embeddings or the output layer, which transformers' quantizers keep)
  at 1 byte (int8) or 0.5625 byte (int4: half a byte plus one float32 scale per block of 64);
* KV cache: keys and values of every layer for each token held, all rows together. The engine's
  cache keeps every column of sliding-window layers too (its own masks hide the old ones), so a
  sliding layer counts like a full one. Its buffers grow by half again when full, so a batch can
  hold up to 1.5x the figure for the tokens it holds.

Activations (one chunk of prefill) and the logits are left out: they are small beside the
weights at the sizes where fitting is a question.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FIT_ENV_VAR",
    "DeviceFit",
    "FitReport",
    "MemberEstimate",
    "auto_dtype",
    "check_wanted",
    "estimate_config",
    "fit_report",
    "free_memory",
    "quantized_bits",
]

FIT_ENV_VAR = "UNITE_FIT_CHECK"
"""``UNITE_FIT_CHECK=0`` loads without the check (an estimate can be wrong for exotic models)."""

TOKENS = 1000
"""The cache a member must have room for beyond its weights: 1,000 tokens of batch."""

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Bytes per quantized weight: int4 is half a byte plus a float32 scale per block of 64.
_QUANT_BYTES = {8: 1.0, 4: 0.5 + 4 / 64}
GIB = 1024**3


def auto_dtype(device_type: str, stated: str | None, bf16_ok: bool) -> str:
    """What ``dtype="auto"`` means on a device of this type.

    CPU: float32 (half-precision matmuls are slow or missing there). A GPU: the checkpoint's own
    half precision (``stated``) where the device supports it, else bfloat16, or float16 on a
    device without bfloat16. A checkpoint stating float32 gets the device's half precision too:
    float32 is what GGUF conversions and many small checkpoints write, not a precision anyone
    chose for a GPU. ``mps``: float16 unless the checkpoint says bfloat16 and it is supported.
    """
    if device_type == "cpu":
        return "float32"
    if stated == "float16" or (stated == "bfloat16" and bf16_ok):
        return stated
    if device_type == "mps":
        return "float16"
    return "bfloat16" if bf16_ok else "float16"


def quantized_bits(quantization: str | Mapping[str, Any] | None) -> int | None:
    """Bits per quantized weight of a short name, a config's JSON or dict, or None (unquantized).

    Unknown methods count as 8 bits: no estimate is then exact, and 8 is the widest common one.
    """
    if quantization is None:
        return None
    if isinstance(quantization, str):
        if quantization in ("int8", "int4"):
            return int(quantization[3:])
        quantization = json.loads(quantization)
    assert isinstance(quantization, Mapping)
    if quantization.get("load_in_4bit") or quantization.get("_load_in_4bit"):
        return 4
    bits = quantization.get("bits") or quantization.get("weight_bits")
    if isinstance(bits, int) and bits in (4, 8):
        return bits
    kind = json.dumps(quantization.get("quant_type", "")).lower()
    return 4 if "int4" in kind or "4bit" in kind else 8


@dataclass(frozen=True)
class MemberEstimate:
    """One member's memory: weights, and KV cache per 1,000 tokens held (all rows together)."""

    name: str
    devices: tuple[str, ...]
    dtype: str
    quantization: str | None
    params: int
    weights_bytes: int
    kv_bytes_per_1k: int

    @property
    def need_bytes(self) -> int:
        """What loading it and decoding 1,000 tokens of batch takes."""
        return self.weights_bytes + self.kv_bytes_per_1k * TOKENS // 1000


def estimate_config(
    config: Any,
    *,
    dtype: str,
    quantization: str | Mapping[str, Any] | None = None,
    name: str = "member",
    devices: Sequence[str] = ("cpu",),
) -> MemberEstimate:
    """Estimate a member from its transformers config: no weights read, nothing allocated.

    ``dtype`` is a resolved dtype name (not "auto"); ``quantization`` a short name, a config's
    JSON or dict, or None (a pre-quantized checkpoint's own ``quantization_config`` is used).
    """
    import torch
    from transformers import AutoModelForCausalLM

    if quantization is None:
        stated = getattr(config, "quantization_config", None)
        if stated is not None:
            quantization = stated if isinstance(stated, Mapping) else stated.to_dict()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    size = _DTYPE_BYTES[dtype]
    bits = quantized_bits(quantization)
    out = model.get_output_embeddings()
    skip = {id(out.weight)} if out is not None else set()
    packed = set()
    if bits is not None:
        packed = {
            id(m.weight)
            for m in model.modules()
            if isinstance(m, torch.nn.Linear) and id(m.weight) not in skip
        }
    params = weights = 0.0
    for p in model.parameters():  # shared (tied) parameters once
        params += p.numel()
        weights += p.numel() * (_QUANT_BYTES[bits] if id(p) in packed and bits else size)
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    per_token = 2 * int(text.num_hidden_layers) * kv_heads * head_dim * size
    label = None if bits is None else f"int{bits}"
    return MemberEstimate(
        name, tuple(devices), dtype, label, int(params), int(weights), per_token * 1000
    )


def free_memory(device: str) -> int | None:
    """Bytes free on ``device`` now, or None where it cannot be told (mps, disk, unknown).

    CPU: the kernel's ``MemAvailable`` (free plus reclaimable page cache), via psutil where it is
    installed; CUDA: what ``torch.cuda.mem_get_info`` reports free on that GPU.
    """
    kind, _, index = device.partition(":")
    if kind == "cpu":
        try:
            import psutil

            return int(psutil.virtual_memory().available)
        except ImportError:
            return _meminfo_available()
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(int(index) if index else 0)
        return int(free)
    return None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class DeviceFit:
    """One device (or a set a member spans): what its members need against what is free."""

    devices: tuple[str, ...]
    members: tuple[str, ...]
    need_bytes: int
    free_bytes: int | None

    @property
    def ok(self) -> bool:
        return self.free_bytes is None or self.need_bytes <= self.free_bytes


@dataclass(frozen=True)
class FitReport:
    """The estimate of an ensemble's members and whether each device has room; printable."""

    members: tuple[MemberEstimate, ...]
    devices: tuple[DeviceFit, ...]

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.devices)

    def __str__(self) -> str:
        lines = [
            f"{'member':<28} {'device':<14} {'dtype':<9} {'quant':<5} {'params':>8} "
            f"{'weights':>10} {'KV/1k tok':>10}"
        ]
        for m in self.members:
            lines.append(
                f"{m.name[:28]:<28} {','.join(m.devices)[:14]:<14} {m.dtype:<9} "
                f"{m.quantization or '-':<5} {m.params / 1e9:>7.2f}B {_gib(m.weights_bytes):>10} "
                f"{_gib(m.kv_bytes_per_1k):>10}"
            )
        for d in self.devices:
            free = "unknown" if d.free_bytes is None else _gib(d.free_bytes)
            verdict = "fits" if d.ok else "DOES NOT FIT"
            lines.append(
                f"{','.join(d.devices)}: needs {_gib(d.need_bytes)} (weights + {TOKENS} tokens of "
                f"cache for {', '.join(d.members)}), free {free}: {verdict}"
            )
        return "\n".join(lines)

    def refusal(self) -> str | None:
        """Why loading would run out of memory, with the numbers and the fixes; None if it fits."""
        bad = [d for d in self.devices if not d.ok]
        if not bad:
            return None
        d = bad[0]
        assert d.free_bytes is not None
        return (
            f"{', '.join(d.members)} need(s) about {_gib(d.need_bytes)} on "
            f"{','.join(d.devices)} (weights plus {TOKENS} tokens of KV cache) but "
            f"{_gib(d.free_bytes)} is free there. Fix: a smaller dtype (dtype='bfloat16' or "
            "'float16' halves float32), quantization='int8' or 'int4', another device (device= "
            "'cuda:1') or several (device='auto' spreads the layers over the GPUs); or set "
            f"{FIT_ENV_VAR}=0 to load anyway."
        )


def fit_report(
    estimates: Sequence[MemberEstimate], free: Mapping[str, int | None] | None = None
) -> FitReport:
    """Group the members by the devices they use and compare with the free memory there.

    ``free`` (device -> bytes) replaces the measured figure, e.g. a budget to plan for.
    """
    groups: dict[tuple[str, ...], list[MemberEstimate]] = {}
    for e in estimates:
        groups.setdefault(e.devices, []).append(e)
    fits = []
    for devices, members in groups.items():
        frees = [free[d] if free is not None and d in free else free_memory(d) for d in devices]
        total = None if any(f is None for f in frees) else sum(f or 0 for f in frees)
        need = sum(m.need_bytes for m in members)
        fits.append(DeviceFit(devices, tuple(m.name for m in members), need, total))
    return FitReport(tuple(estimates), tuple(fits))


def check_wanted() -> bool:
    """Whether the fit check runs (``$UNITE_FIT_CHECK`` unset or not a false word)."""
    flag = os.environ.get(FIT_ENV_VAR, "").strip().lower()
    return flag not in ("0", "false", "no", "off")


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / 1024**2:.1f} MiB"
