"""The web dashboard: static files served by the API at ``/``.

No JavaScript build: ``static/app.js`` is a plain ES module. The chart library
(TradingView's lightweight-charts) comes from the npm registry, pinned in
``web/package.json``/``package-lock.json``; ``make install`` copies its
standalone build into ``static/vendor/``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
CHART_LIBRARY = STATIC_DIR / "vendor" / "lightweight-charts.standalone.production.js"


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` and its assets under ``/static``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
