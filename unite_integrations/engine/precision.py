"""In what precision a member's weights are held: the dtype ("auto" resolved for its device and
checkpoint) and the quantization (short names mapped to the backend installed, or a transformers
config rebuilt as given).

Apart from :mod:`.loading` because :func:`.loading.member_estimate` needs the same answers to
size a member without loading it, and a missing backend should be named (with the package to
install) before any weight is read. ``torch`` and ``transformers`` are imported inside the
functions, so importing this stays cheap.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from ..errors import ModelLoadError
from .config import MemberSpec
from .devices import member_devices
from .fit import auto_dtype

__all__ = [
    "prequantized",
    "quantization_config",
    "resolve_dtype",
    "stated_dtype",
    "torch_dtype",
]


def prequantized(config: Any) -> bool:
    """Whether the checkpoint is stored quantized (GPTQ, AWQ, compressed-tensors, ...)."""
    return getattr(config, "quantization_config", None) is not None


def torch_dtype(dtype: str) -> Any:
    """The torch dtype of a dtype name (a resolved one: not "auto")."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def _bf16_supported(device_type: str) -> bool:
    import torch

    if device_type == "cuda":  # natively: emulated bfloat16 (pre-Ampere GPUs) is slow
        return bool(
            torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        )
    return device_type == "xpu"  # mps: only recent macOS; float16 is the safe choice there


def stated_dtype(config: Any) -> str | None:
    """The dtype a checkpoint's config states (``dtype``, formerly ``torch_dtype``), or None."""
    for key in ("dtype", "torch_dtype"):
        value = getattr(config, key, None)
        if value is not None and not isinstance(value, str):
            value = str(value).removeprefix("torch.")
        if value in ("float32", "float16", "bfloat16"):
            return str(value)
    return None


def resolve_dtype(spec: MemberSpec, config: Any) -> str:
    """The member's dtype name: its own, or what "auto" means on the device of its first
    layers for this checkpoint (see :func:`.fit.auto_dtype`)."""
    if spec.dtype != "auto":
        return spec.dtype
    kind = member_devices(spec)[0].partition(":")[0]
    return auto_dtype(kind, stated_dtype(config), _bf16_supported(kind))


#: Quantization method -> the package that provides its backend (what to pip install).
_BACKENDS = {
    "bitsandbytes": "bitsandbytes",
    "torchao": "torchao",
    "gptq": "gptqmodel",
    "awq": "autoawq",
    "compressed-tensors": "compressed-tensors",
    "quanto": "optimum-quanto",
    "hqq": "hqq",
    "eetq": "eetq",
}
_MODULES = {"optimum-quanto": "optimum.quanto", "compressed-tensors": "compressed_tensors"}


def _installed(package: str) -> bool:
    """Whether the package's module imports (``sys.modules[name] = None`` reads as missing)."""
    module = _MODULES.get(package, package.replace("-", "_"))
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _missing_backend(spec: MemberSpec, what: str, package: str) -> ModelLoadError:
    return ModelLoadError(
        f"member {spec.display_name!r}: quantization {what} needs the package {package!r}, "
        f"which is not installed. Fix: `pip install {package}`"
        + (" (or `pip install 'unite-integrations[quantization]'`)" if package == "torchao" else "")
        + ", or quantization=None."
    )


def quantization_config(spec: MemberSpec, device_type: str, dtype: str) -> Any | None:
    """The transformers quantization config for the member, from what is installed.

    "int8"/"int4": bitsandbytes on CUDA; torchao where bitsandbytes is missing, and on CPU for
    int8 (weight-only). A config given as such (kept as JSON in the spec) is rebuilt as it was.
    None: unquantized, or pre-quantized (transformers reads the checkpoint's own config).
    """
    q = spec.quantization
    if q is None:
        return None
    if q not in ("int8", "int4"):
        from transformers.quantizers.auto import AutoQuantizationConfig

        config = AutoQuantizationConfig.from_dict(json.loads(q))
        method = str(getattr(config.quant_method, "value", config.quant_method))
        package = _BACKENDS.get(method)
        if package is not None and not _installed(package):
            raise _missing_backend(spec, f"method {method!r}", package)
        return config
    from transformers import BitsAndBytesConfig, TorchAoConfig

    if device_type == "cuda" and _installed("bitsandbytes"):
        if q == "int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch_dtype(dtype),
        )
    if device_type == "cuda" or (device_type == "cpu" and q == "int8"):
        if not _installed("torchao"):
            package = "bitsandbytes" if device_type == "cuda" else "torchao"
            raise _missing_backend(spec, f"{q!r} on {device_type}", package)
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

        kind = Int8WeightOnlyConfig() if q == "int8" else Int4WeightOnlyConfig(group_size=128)
        return TorchAoConfig(kind)
    raise ModelLoadError(
        f"member {spec.display_name!r}: quantization={q!r} has no backend on {device_type}: "
        "bitsandbytes and torchao quantize on CUDA, and torchao on CPU for int8 weight-only "
        "only. Fix: quantization='int8' on CPU, a CUDA device for 'int4', or quantization=None."
    )
