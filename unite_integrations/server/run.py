"""``serve()``: load an ensemble and run its OpenAI-compatible app with uvicorn.

Binds 127.0.0.1 unless told otherwise: an ensemble server has no business on a public interface
without an API key and a proxy in front. On SIGINT/SIGTERM uvicorn stops accepting connections
and lets requests in flight finish for ``graceful_timeout`` seconds; the ones still running then
are cancelled (their streams close, which cancels their engine requests), and the app's shutdown
closes the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..chat import ChatDefaults
from ..engine.config import MemberSpec, ensemble_config
from ..engine.engine import UniTEEngine
from ..engine.scheduler import MAX_BATCH_ROWS, MAX_QUEUE
from .app import DEFAULT_MAX_BODY_BYTES, create_app

__all__ = ["serve"]


def serve(
    members: Sequence[str | MemberSpec],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    model_name: str | None = None,
    top_k: int = 10,
    weights: Sequence[float] | None = None,
    cache_dir: str | Path | None = None,
    defaults: ChatDefaults | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch_rows: int = MAX_BATCH_ROWS,
    max_queue: int = MAX_QUEUE,
    prefix_cache: int | str = "auto",
    prefill_chunk: int | None = None,
    graceful_timeout: int = 30,
    log_level: str = "info",
) -> None:
    """Load ``members`` as one ensemble and serve it until interrupted.

    ``max_batch_rows``: rows decoded together at most; ``max_queue``: requests waiting at most,
    beyond which a request gets 429 at once (``UniTEEngine``'s bounds; >= 1, else a
    ``ConfigError`` before anything loads); ``prefix_cache``: how much of earlier prompts' and
    answers' KV columns each member keeps (a shared system prompt runs once; see
    ``UniTEEngine``); ``prefill_chunk``: prompt ids a member runs per step for a long prompt
    (chunked prefill: decoding rows and short requests do not wait for it whole; None: 512 on a
    CPU, 512 on a GPU). The engine is the server's own (not the
    process's shared one, whose bounds are the defaults) and closes with it."""
    import uvicorn

    config = ensemble_config(
        members, top_k=top_k, weights=weights, cache_dir=cache_dir, prefix_cache=prefix_cache
    )
    engine = UniTEEngine(
        config, max_batch_rows=max_batch_rows, max_queue=max_queue, prefill_chunk=prefill_chunk
    )
    app = create_app(
        engine,
        model_name=model_name,
        api_key=api_key,
        defaults=defaults,
        max_body_bytes=max_body_bytes,
        close_engine=True,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=max(1, graceful_timeout),
    )
