"""One loaded engine per ensemble configuration, shared by every adapter in the process.

Loading a member costs seconds and hundreds of MB; a LangChain chat model and a LlamaIndex LLM over
the same members must not load them twice. Adapters are cheap to construct and call
``get_engine`` on first use; the key is the configuration's JSON, so equal configurations built
separately (a string member vs an equal ``MemberSpec``) share one engine.
"""

from __future__ import annotations

import threading

from .config import EnsembleConfig, ensemble_config
from .engine import UniTEEngine

__all__ = ["clear_engines", "ensemble_config", "get_engine", "loaded_engines"]

_engines: dict[str, UniTEEngine] = {}
_loading: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def get_engine(config: EnsembleConfig) -> UniTEEngine:
    """The process's engine for ``config``, loading it on first use (once, even under threads)."""
    key = config.model_dump_json()
    with _guard:
        engine = _engines.get(key)
        if engine is not None and not engine.closed:
            return engine
        lock = _loading.setdefault(key, threading.Lock())
    with lock:  # one thread loads; others wait for it rather than loading the same models
        with _guard:
            engine = _engines.get(key)
        if engine is None or engine.closed:  # a closed engine is replaced by a fresh one
            engine = UniTEEngine(config)
            with _guard:
                _engines[key] = engine
        return engine


def loaded_engines() -> list[UniTEEngine]:
    with _guard:
        return list(_engines.values())


def clear_engines() -> None:
    """Forget every shared engine (their memory is freed once no adapter holds them)."""
    with _guard:
        _engines.clear()
        _loading.clear()
