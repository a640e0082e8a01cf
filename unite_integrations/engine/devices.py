"""Which devices a member's weights go to: its one device, or the several a device map spreads
it over, checked against this machine before any slow work; and where its union step runs.

Apart from :mod:`.loading` because the dtype a member gets ("auto", :mod:`.precision`) and the
memory it needs (:mod:`.fit`) follow from its devices, before any weight is read. ``torch`` is
imported inside the functions, so importing this stays cheap.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError
from .config import MemberSpec

__all__ = ["available_devices", "check_device", "member_devices", "union_device"]


def available_devices() -> list[str]:
    """The torch devices this process can use, for error messages and CLIs."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        devices += [f"xpu:{i}" for i in range(xpu.device_count())]
    return devices


def check_device(spec: MemberSpec) -> Any:
    """Fail before any slow work if the member's device is malformed or absent on this machine.

    Returns the torch device of a member on one device, None for one placed by a device map
    (each device an explicit map names is checked the same way; "disk" is accelerate's own).
    """

    placement = spec.placement_map
    if placement is None:
        return _one_device(spec, spec.device)
    if isinstance(placement, dict):
        for device in placement.values():
            if device != "disk":
                _one_device(spec, f"cuda:{device}" if isinstance(device, int) else device)
    return None


def _one_device(spec: MemberSpec, device: str) -> Any:
    import torch

    available = available_devices()
    problem = ""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        problem = f"{device!r} is not a torch device string ({e})"
    else:
        if dev.type == "cpu":
            return dev
        if dev.type in ("cuda", "xpu"):
            backend = torch.cuda if dev.type == "cuda" else getattr(torch, "xpu", None)
            count = backend.device_count() if backend is not None and backend.is_available() else 0
            if count and (dev.index is None or dev.index < count):
                return dev
        elif dev.type == "mps" and "mps" in available:
            return dev
        problem = f"device {device!r} is not available on this machine"
    raise ModelLoadError(
        f"member {spec.display_name!r}: {problem}. Available devices: {', '.join(available)}. "
        "Fix: set the member's device to one of these."
    )


def member_devices(spec: MemberSpec) -> tuple[str, ...]:
    """The devices a member's weights go to: its device, or those its device map uses (every
    GPU for a strategy such as "auto", the CPU where there is none), in order."""
    placement = spec.placement_map
    if placement is None:
        return (spec.device,)
    if isinstance(placement, str):
        gpus = tuple(d for d in available_devices() if d.startswith("cuda"))
        return gpus or ("cpu",)
    named = [f"cuda:{d}" if isinstance(d, int) else d for d in placement.values()]
    return tuple(dict.fromkeys(d for d in named if d != "disk")) or ("cpu",)


def union_device(spec: MemberSpec, model: Any) -> Any:
    """Where the union step runs for a first member: its device, or for a member spread by a
    device map, the device of its first layers (accelerate returns its logits there)."""
    import torch

    if spec.placement_map is None:
        return torch.device(spec.device)
    return model.device
