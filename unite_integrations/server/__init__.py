"""``unite serve``: the ensemble as an OpenAI-compatible HTTP server.

``create_app(engine)`` is the ASGI app (Starlette); ``serve(...)`` loads an ensemble and runs the
app with uvicorn. Needs the ``server`` extra: ``pip install "unite-integrations[server]"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .run import serve

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        try:
            from . import app, run
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            from ..errors import ConfigError

            raise ConfigError(
                f"the server needs Starlette and uvicorn ({e.name} is missing): "
                'pip install "unite-integrations[server]"'
            ) from e
        return {"create_app": app.create_app, "serve": run.serve}[name]
    raise AttributeError(name)
