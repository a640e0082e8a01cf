"""Pre-warm the cache: resolve the built-in model aliases and convert their GGUF files once.

Converting a GGUF file takes 15-50 s per model (de-quantizing every tensor and rebuilding the
tokenizer); a converted directory then loads in about a second. Running this at set-up time (the
Makefile does) keeps that cost out of the first test or the first user call.

    python scripts/prepare_models.py                   # both aliases, default cache directory
    python scripts/prepare_models.py --check           # also reload each and generate a few tokens
    python scripts/prepare_models.py gemma-3-270m --cache-dir /tmp/cache

The cache directory is ``$UNITE_CACHE_DIR`` or the platform's per-user cache. Exits with status 1
if any alias could not be prepared (the message says what to install).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never wait on a hub

try:
    import unite_integrations  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unite_integrations.engine.config import MemberSpec
from unite_integrations.engine.loading import (
    BUILTIN_ALIASES,
    cached_conversion,
    convert_gguf,
    default_cache_dir,
    load_member,
    resolve_source,
)
from unite_integrations.errors import ModelLoadError

PROMPT = "The capital of France is"


def _check(alias: str, cache_dir: Path) -> None:
    """Reload from the converted directory and decode greedily, to prove the cache is usable."""
    import torch

    start = time.perf_counter()
    model, tokenizer = load_member(MemberSpec(source=alias), cache_dir)
    print(f"  reloaded in {time.perf_counter() - start:.1f} s")
    inputs = tokenizer(PROMPT, return_tensors="pt")
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    new = out[0, inputs["input_ids"].shape[1] :]
    text = tokenizer.decode(new, skip_special_tokens=True)
    print(f"  greedy {len(new)} tokens in {time.perf_counter() - start:.1f} s: {PROMPT}{text!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "aliases",
        nargs="*",
        metavar="ALIAS",
        help=f"aliases to prepare (default: all of {', '.join(BUILTIN_ALIASES)})",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="default: $UNITE_CACHE_DIR or the per-user cache",
    )
    parser.add_argument(
        "--check", action="store_true", help="reload each model and generate a few tokens"
    )
    args = parser.parse_args(argv)
    cache_dir: Path = args.cache_dir if args.cache_dir is not None else default_cache_dir()
    aliases: list[str] = args.aliases or list(BUILTIN_ALIASES)
    print(f"cache directory: {cache_dir}")
    failed = 0
    for alias in aliases:
        print(f"{alias}:")
        try:
            start = time.perf_counter()
            source = resolve_source(alias, cache_dir)
            print(f"  source {source} ({time.perf_counter() - start:.1f} s)")
            if isinstance(source, Path) and source.is_file():
                already = cached_conversion(source, cache_dir)
                start = time.perf_counter()
                target = convert_gguf(source, cache_dir)
                how = "already converted" if already else "converted"
                print(f"  {how}: {target} ({time.perf_counter() - start:.1f} s)")
            if args.check:
                _check(alias, cache_dir)
        except ModelLoadError as e:
            print(f"  FAILED: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
