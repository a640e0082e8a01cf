"""The code's shape, as docs/development.md ("Architecture") states it: no engine module over 500
lines, no adapter module over 400, no function over 80 lines anywhere in the package. A limit is
a prompt to split by job; an exception needs its reason in docs/development.md and here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "unite_integrations"
LIMITS = {"engine": 500, "langchain": 400, "llama_index": 400}
MAX_FUNCTION = 80
EXCEPTIONS: dict[str, str] = {}  # "path" or "path:function" -> why (listed in the docs too)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("package", sorted(LIMITS))
def test_modules_stay_under_their_package_limit(package: str) -> None:
    limit = LIMITS[package]
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in sorted((PACKAGE / package).rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > limit
        and str(p.relative_to(PACKAGE)) not in EXCEPTIONS
    }
    assert not long, f"over {limit} lines: {long}"


def test_no_function_over_80_lines() -> None:
    long = {}
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                size = node.end_lineno - node.lineno + 1
                key = f"{path.relative_to(PACKAGE)}:{node.name}"
                if size > MAX_FUNCTION and key not in EXCEPTIONS:
                    long[key] = size
    assert not long, f"functions over {MAX_FUNCTION} lines: {long}"
    assert len(_modules()) > 50  # the walk saw the package (this test can fail)


# What each layer may import of the package (docs/development.md, "The layers"): the engine
# nothing above it; the chat core the engine; the front ends and compat/ what is below them.
ABOVE = {
    "engine": {"chat", "server", "langchain", "llama_index", "compat", "cli", "tools"},
    "chat": {"server", "langchain", "llama_index", "cli", "compat", "tools"},
}


def _package_imports(path: Path) -> set[str]:
    """The top-level subpackages of unite_integrations a module imports (relative or absolute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 1 for engine/x.py
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from ..chat import x  /  from .. import tools
                up = node.level - 1
                if up < depth:
                    continue  # within its own subpackage
                names = (
                    (node.module or "").split(".") if node.module else [a.name for a in node.names]
                )
                found.add(names[0])
            elif node.module and node.module.startswith("unite_integrations."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("unite_integrations."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    wrong = {
        str(p.relative_to(PACKAGE)): sorted(_package_imports(p) & ABOVE[layer])
        for p in sorted((PACKAGE / layer).rglob("*.py"))
    }
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"{layer}/ imports a layer above it: {wrong}"


def test_the_import_check_sees_imports() -> None:
    assert "engine" in _package_imports(PACKAGE / "chat" / "core.py")
    assert "chat" in _package_imports(PACKAGE / "server" / "app.py")
