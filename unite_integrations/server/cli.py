"""``unite serve``: the command that runs the OpenAI-compatible server.

Only argparse here (``unite --help`` stays fast); the server and torch load when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..defaults import DEFAULT_MEMBERS

__all__ = ["add_subcommands"]


def add_subcommands(sub: Any) -> None:
    """Add ``serve`` to the ``unite`` command's subparsers."""
    p = sub.add_parser(
        "serve",
        help="serve an ensemble as an OpenAI-compatible API (/v1/chat/completions ...)",
        description="Serve an ensemble over HTTP with OpenAI's API: point the openai client, "
        "LangChain's ChatOpenAI or LlamaIndex's OpenAILike at http://HOST:PORT/v1.",
    )
    p.add_argument(
        "-m",
        "--member",
        action="append",
        dest="members",
        metavar="SOURCE",
        help=f"alias, directory, .gguf file or hub id; repeat for each member "
        f"(default: {' + '.join(DEFAULT_MEMBERS)})",
    )
    p.add_argument(
        "-w",
        "--weight",
        action="append",
        type=float,
        dest="weights",
        help="member weight, once per --member, in the same order",
    )
    p.add_argument("--device", default="cpu", help="device for every member (cpu, cuda:0 ...)")
    p.add_argument("-k", "--top-k", type=int, default=10, help="candidates per member per step")
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
        "--graceful-timeout",
        type=int,
        default=30,
        help="seconds requests in flight may finish after SIGTERM before they are cancelled",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--cache-dir", default=None, help="cache for converted models and maps")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import os

    from ..chat import ChatDefaults
    from ..engine.config import MemberSpec
    from ..errors import ConfigError

    try:
        from .run import serve
    except ImportError as e:
        raise ConfigError(
            f"unite serve needs Starlette and uvicorn ({e.name} is missing): "
            'pip install "unite-integrations[server]"'
        ) from e
    sources = args.members or list(DEFAULT_MEMBERS)
    weights = args.weights or [1.0] * len(sources)
    if len(weights) != len(sources):
        raise ConfigError(f"{len(weights)} --weight for {len(sources)} members: give one each")
    specs = [MemberSpec(source=s, weight=w, device=args.device) for s, w in zip(sources, weights)]
    print(f"loading {len(specs)} member(s): {', '.join(sources)} ...", file=sys.stderr)
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
        graceful_timeout=args.graceful_timeout,
        log_level=args.log_level,
    )
    return 0
