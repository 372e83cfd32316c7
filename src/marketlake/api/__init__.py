"""The REST API: ``create_app(settings, store)`` builds a FastAPI app (nothing at import).

The package itself stays light: ``marketlake.api.keys`` (used by ``keys create``)
must not pull in FastAPI, so ``create_app`` is imported when first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from marketlake.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from marketlake.api.app import create_app

        return create_app
    raise AttributeError(f"module 'marketlake.api' has no attribute {name!r}")
