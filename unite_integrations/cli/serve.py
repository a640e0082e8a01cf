"""``unite serve``: the command that runs the OpenAI-compatible server.

Only argparse here (``unite --help`` stays fast); the server and torch load when the command runs.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .command import Command
from .members import add_member_options, announce

if TYPE_CHECKING:
    from ..engine.config import MemberSpec

__all__ = ["COMMAND", "MAX_BATCH_ROWS", "MAX_QUEUE"]

#: The engine's bounds (``engine.scheduler``'s ``MAX_BATCH_ROWS``/``MAX_QUEUE``), written out so
#: that ``unite --help`` need not import the engine (and torch); a test keeps them equal.
MAX_BATCH_ROWS = 64
MAX_QUEUE = 256


def _arguments(p: argparse.ArgumentParser) -> None:
    add_member_options(p, prefix_cache=True)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)",
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1 (default: $UNITE_API_KEY)",
    )
    p.add_argument(
        "--model-name",
        default=None,
        help="the model id clients send (default: unite: and the members joined by +)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=256,
        help="tokens generated when a request does not say (default 256)",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=4 * 1024 * 1024, help="larger request bodies get 413"
    )
    p.add_argument(
        "--max-batch-rows",
        type=int,
        default=MAX_BATCH_ROWS,
        metavar="N",
        help=f"rows decoded together at most (default {MAX_BATCH_ROWS}); more wait in the queue",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=MAX_QUEUE,
        metavar="N",
        help=f"requests waiting at most (default {MAX_QUEUE}); one more gets 429 at once",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        metavar="IDS",
        help="prompt ids a member runs per step for a long prompt (default: 512 on a CPU, 512 on "
        "a GPU): requests decoding and short newcomers never wait for a long prompt's prefill",
    )
    p.add_argument(
        "--graceful-timeout",
        type=int,
        default=30,
        help="seconds requests in flight may finish after SIGTERM before they are cancelled",
    )
    p.add_argument("--log-level", default="info")


def _validate(args: argparse.Namespace) -> None:
    """The server's packages are installed and the bounds are whole numbers >= 1."""
    try:
        from ..server import run  # noqa: F401  (Starlette and uvicorn)
    except ImportError as e:
        raise ConfigError(
            f"unite serve needs Starlette and uvicorn ({e.name} is missing): "
            'pip install "unite-integrations[server]"'
        ) from e
    for flag, value in (
        ("--max-batch-rows", args.max_batch_rows),
        ("--max-queue", args.max_queue),
        ("--prefill-chunk", args.prefill_chunk or 1),
    ):
        if value < 1:
            raise ConfigError(f"{flag} {value}: give a whole number >= 1")


def _run(args: argparse.Namespace, specs: list[MemberSpec]) -> int:
    from ..chat import ChatDefaults
    from ..server.run import serve

    announce("loading", specs)
    serve(
        specs,
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("UNITE_API_KEY") or None,
        model_name=args.model_name,
        top_k=args.top_k,
        cache_dir=args.cache_dir,
        defaults=ChatDefaults(max_tokens=args.max_tokens),
        max_body_bytes=args.max_body_bytes,
        max_batch_rows=args.max_batch_rows,
        max_queue=args.max_queue,
        prefix_cache=args.prefix_cache,
        prefill_chunk=args.prefill_chunk,
        graceful_timeout=args.graceful_timeout,
        log_level=args.log_level,
    )
    return 0


COMMAND = Command(
    name="serve",
    help="serve an ensemble as an OpenAI-compatible API (/v1/chat/completions ...)",
    description="Serve an ensemble over HTTP with OpenAI's API: point the openai client, "
    "LangChain's ChatOpenAI or LlamaIndex's OpenAILike at http://HOST:PORT/v1.",
    arguments=_arguments,
    run=_run,
    validate=_validate,
)
