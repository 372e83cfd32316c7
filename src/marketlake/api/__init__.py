"""The REST API: ``create_app(settings, store)`` builds a FastAPI app (nothing at import)."""

from __future__ import annotations

from marketlake.api.app import create_app

__all__ = ["create_app"]
