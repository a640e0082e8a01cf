"""The public surface is exactly ``__all__``, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import unite_integrations


def test_every_public_name_resolves():
    for name in unite_integrations.__all__:
        assert getattr(unite_integrations, name) is not None, name


def test_importing_the_package_does_not_import_the_frameworks():
    code = (
        "import sys, unite_integrations; "
        "print(any(m.split('.')[0] in ('langchain_core', 'llama_index') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_attribute_is_an_attribute_error():
    try:
        unite_integrations.NoSuchThing  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("expected AttributeError")
