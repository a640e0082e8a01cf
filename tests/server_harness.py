"""Run the OpenAI-compatible app in-process: uvicorn in a thread, on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from unite_integrations.server import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(engine: Any, **options: Any) -> Iterator[str]:
    """Serve ``engine`` on 127.0.0.1 until the block ends; yields the base URL (``.../v1``)."""
    with serving(engine, **options) as (url, _):
        yield url


@contextmanager
def serving(
    engine: Any, graceful_timeout: int | None = None, **options: Any
) -> Iterator[tuple[str, uvicorn.Server]]:
    """``running``, also yielding the uvicorn server (to shut it down from a test)."""
    app = create_app(engine, **options)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=graceful_timeout,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1", server
    finally:
        server.should_exit = True
        thread.join(30)
