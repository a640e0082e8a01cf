"""Turn a :class:`MemberSpec` into a loaded model and tokenizer, and size members without loading.

The steps have modules of their own: where the weights come from (:mod:`.sources`: aliases, local
directories, GGUF files converted once, hub ids), which devices they go to (:mod:`.devices`), in
what dtype and quantization (:mod:`.precision`), and whether they fit (:mod:`.fit`). This module
runs them in order for one member and reads the checkpoint; ``estimate_fit`` lives here, not in
:mod:`.fit`, because it needs the sources and the dtype (:mod:`.precision`), and
:mod:`.precision` imports :mod:`.fit`. The names of those modules that callers have always
imported from here still are (``load_member``, ``resolve_source``, ``union_device``, ...).

Everything that goes wrong is raised as :class:`~unite_integrations.errors.ModelLoadError` naming
the member and what to do, because the user of an ensemble rarely knows which of several models or
which step failed.

An ordinary load is quiet: transformers draws a "Loading weights" progress bar for every model it
reads (twice per ensemble, inside every chain that builds one), which is noise for a load of a few
seconds. Progress bars stay for long work (converting a GGUF file, downloads from the hub) and come
back for loads too with ``$UNITE_PROGRESS=1`` or ``load_member(..., progress=True)``.

``torch`` and ``transformers`` are imported inside the functions that need them, so importing
this module (e.g. for a CLI ``--help``) stays cheap.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError
from .config import EnsembleConfig, MemberSpec, member_specs
from .devices import available_devices, check_device, member_devices, union_device
from .fit import FitReport, MemberEstimate, check_wanted, estimate_config, fit_report
from .head_rows import pad_head_rows
from .precision import (
    prequantized,
    quantization_config,
    resolve_dtype,
    stated_dtype,
    torch_dtype,
)
from .sources import (
    BUILTIN_ALIASES,
    CACHE_ENV_VAR,
    cached_conversion,
    convert_gguf,
    default_cache_dir,
    resolve_source,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BUILTIN_ALIASES",
    "CACHE_ENV_VAR",
    "PROGRESS_ENV_VAR",
    "available_devices",
    "cached_conversion",
    "convert_gguf",
    "default_cache_dir",
    "estimate_fit",
    "load_member",
    "member_devices",
    "member_estimate",
    "quantization_config",
    "resolve_dtype",
    "resolve_source",
    "stated_dtype",
    "union_device",
]

_log = logging.getLogger("unite_integrations")

PROGRESS_ENV_VAR = "UNITE_PROGRESS"


def _progress_wanted(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    flag = os.environ.get(PROGRESS_ENV_VAR, "").strip().lower()
    return flag not in ("", "0", "false", "no", "off")


_quiet_guard = threading.Lock()
_quiet_depth = 0  # loads in progress (threads may load engines at once)
_bars_restore: tuple[bool, bool] | None = None  # (transformers bars, hub bars) before the first


@contextlib.contextmanager
def _quiet_load(progress: bool | None) -> Iterator[None]:
    """transformers' per-model "Loading weights" bars off while models are read from disk.

    The switch is global in transformers, so concurrent loads share one off period (counted), and
    the state before it is put back after the last. Hub download bars are left as they were:
    a download is long work.
    """
    global _quiet_depth, _bars_restore
    if _progress_wanted(progress):
        yield
        return
    hub_utils = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not the class
    from transformers.utils import logging as hf_logging

    def set_bars(transformers_on: bool, hub_on: bool) -> None:
        if transformers_on:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()
        if hub_on != (not hub_utils.are_progress_bars_disabled()):
            (hub_utils.enable_progress_bars if hub_on else hub_utils.disable_progress_bars)()

    with _quiet_guard:
        if _quiet_depth == 0:
            _mute_import_noise(True)
            if hf_logging.is_progress_bar_enabled():
                _bars_restore = (True, not hub_utils.are_progress_bars_disabled())
                set_bars(False, _bars_restore[1])
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_guard:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                _mute_import_noise(False)
                if _bars_restore is not None:
                    set_bars(*_bars_restore)
                    _bars_restore = None


# Loggers that speak once, at import, during a member's first load: transformers imports every
# quantizer's backend that is installed (torchao, from the ``quantization`` extra, then logs each
# CUDA kernel library it cannot load on a CPU machine, and torch's pytree logs a deprecation of
# torchao's registrations). Nothing a user can act on; errors still show.
_IMPORT_NOISE = ("torchao", "torch.utils._pytree")
_noise_levels: dict[str, int] = {}


def _mute_import_noise(mute: bool) -> None:
    for name in _IMPORT_NOISE:
        log = logging.getLogger(name)
        if mute:
            _noise_levels[name] = log.level
            log.setLevel(logging.ERROR)
        elif name in _noise_levels:
            log.setLevel(_noise_levels.pop(name))


def _no_length_warning(tokenizer: Any) -> None:
    """Silence the tokenizer's "sequence length is longer than model_max_length" warning.

    The engine checks every prompt against the member's context window itself and raises a
    ``ContextWindowError`` naming the member, so the tokenizer's own (printed, once per tokenizer,
    often about a ``model_max_length`` no model has) is noise. transformers keeps a dict of
    warnings already given; marking this one as given is its own way to mute it.
    """
    given = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(given, dict):
        given["sequence-length-is-longer-than-the-specified-maximum"] = True


def member_estimate(spec: MemberSpec, cache_dir: Path | None = None) -> MemberEstimate:
    """A member's memory estimate from its config alone (a GGUF source is converted first, once,
    as loading would)."""
    _, path, kwargs = _local_path(spec, cache_dir)
    return _estimate(spec, _read_config(spec, path, kwargs, "check the source."))


def _read_config(spec: MemberSpec, path: Path | str, kwargs: dict[str, Any], fix: str) -> Any:
    """The member's transformers config (config.json only: no weights)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), **kwargs)
    except Exception as e:
        raise ModelLoadError(
            f"member {spec.display_name!r}: could not load {spec.source} ({path}): {e}. Fix: {fix}"
        ) from e


def _estimate(spec: MemberSpec, config: Any) -> MemberEstimate:
    dtype = resolve_dtype(spec, config)
    devices = member_devices(spec)
    q = spec.quantization
    return estimate_config(
        config, dtype=dtype, quantization=q, name=spec.display_name, devices=devices
    )


def estimate_fit(
    members: Any, cache_dir: Path | None = None, free: Mapping[str, int | None] | None = None
) -> FitReport:
    """Whether the members fit their devices, from their configs (no weights): what
    ``unite check --members-only`` prints. ``members``: what ``member_specs`` takes, or an
    ``EnsembleConfig``; ``free``: device -> bytes, to plan for a budget instead of what is free."""
    specs = members.members if isinstance(members, EnsembleConfig) else member_specs(members)
    with _quiet_load(None):  # building on the meta device imports quantization backends
        return fit_report([member_estimate(s, cache_dir) for s in specs], free)


def _check_fit(spec: MemberSpec, config: Any) -> None:
    """Refuse, before any weight is read, a member its devices have no room for now."""
    if not check_wanted():
        return
    why = fit_report([_estimate(spec, config)]).refusal()
    if why is not None:
        raise ModelLoadError(f"member {spec.display_name!r}: {why}")


def _local_path(
    spec: MemberSpec, cache_dir: Path | None
) -> tuple[Path | str, Path | str, dict[str, Any]]:
    """The member's resolved source, its loadable path (a GGUF converted) and the
    from_pretrained kwargs it needs (``local_files_only`` for anything local)."""
    name = spec.display_name
    try:
        resolved = resolve_source(spec.source, cache_dir)
        path: Path | str = resolved
        if isinstance(resolved, Path) and resolved.is_file():
            path = convert_gguf(resolved, cache_dir)
    except ModelLoadError as e:
        raise ModelLoadError(f"member {name!r}: {e}") from e
    return resolved, path, ({"local_files_only": True} if isinstance(resolved, Path) else {})


def load_member(
    spec: MemberSpec, cache_dir: Path | None = None, *, progress: bool | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load one member's model (on its device(s), in eval mode) and tokenizer.

    Order: device check (instant), resolve the source, convert a GGUF once, read the config and
    check that the member fits its devices' free memory (:mod:`.fit`), then load with
    ``local_files_only`` for anything local so that a missing file fails fast instead of trying
    a network that is not there. The dtype ("auto" resolved for the device), quantization and
    placement are logged. ``spec.chat_template``, if given, replaces the tokenizer's.
    ``progress``: show transformers' loading bars (default: only with ``$UNITE_PROGRESS=1``).
    """
    name = spec.display_name
    device = check_device(spec)
    resolved, path, kwargs = _local_path(spec, cache_dir)
    if not kwargs:
        fix = (
            "check the hub id and your network; without network, download the model elsewhere "
            "and give its local directory."
        )
    elif path != resolved:
        fix = f"delete {path} so that it is converted again from {resolved}."
    else:
        fix = (
            "check the directory holds config.json, the weights and the tokenizer files written "
            "by save_pretrained."
        )
    config = _read_config(spec, path, kwargs, fix)
    dtype = resolve_dtype(spec, config)
    devices = member_devices(spec)
    with _quiet_load(progress):  # both may import quantization backends: their import noise off
        _check_fit(spec, config)
        quantized = quantization_config(spec, devices[0].partition(":")[0], dtype)
    load: dict[str, Any] = {"dtype": torch_dtype(dtype), **kwargs}
    if quantized is not None:
        load["quantization_config"] = quantized
    placement = spec.placement_map
    if placement is None and (quantized is not None or prequantized(config)):
        placement = {"": str(device)}  # quantized weights are placed as read, never moved
    if placement is not None:
        load["device_map"] = placement
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet_load(progress):
            tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(path), **load)
        if placement is None:
            model = model.to(device)
        model = model.eval()
        pad_head_rows(model)  # a few rows' output layer at sixteen's cost, where faster
        _no_length_warning(tokenizer)
    except ModelLoadError:
        raise
    except ImportError as e:  # a quantization backend transformers itself found missing
        raise ModelLoadError(
            f"member {name!r}: could not load {spec.source}: {e}. Fix: install the package it "
            "names (torchao: `pip install 'unite-integrations[quantization]'`)."
        ) from e
    except Exception as e:
        raise ModelLoadError(
            f"member {name!r}: could not load {spec.source} ({path}): {e}. Fix: {fix}"
        ) from e
    where = ", ".join(devices) if spec.placement_map is not None else str(device)
    how = "" if quantized is None else f", quantized ({type(quantized).__name__})"
    _log.info("member %r loaded: dtype %s on %s%s", name, dtype, where, how)
    from .sequences import unsupported_layers  # torch, imported when a model loads

    other = unsupported_layers(model)
    if other:
        raise ModelLoadError(
            f"member {name!r}: layers of kind {', '.join(other)} are not supported: the engine "
            "batches full and sliding-window attention exactly, and the caches of other kinds "
            "would shift what each row sees. Fix: choose a model whose layers are all full or "
            "sliding-window attention."
        )
    if spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template
    return model, tokenizer
