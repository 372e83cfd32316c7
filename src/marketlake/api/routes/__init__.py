"""The API's routers, one module per resource.

:data:`API_ROUTERS` is mounted under ``/api/v1`` in this order; a new resource
adds its module here (and nowhere else).
"""

from __future__ import annotations

from fastapi import APIRouter

from marketlake.api.routes import (
    alerts,
    backtests,
    bars,
    datasets,
    health,
    instruments,
    jobs,
    keys,
    live,
    metrics,
    portfolio,
    prices,
    quality,
    tasks,
)

API_ROUTERS: list[APIRouter] = [
    health.router,
    instruments.router,
    bars.router,
    prices.router,
    jobs.router,
    quality.router,
    keys.router,
    metrics.router,
    alerts.router,
    live.router,
    portfolio.router,
    backtests.router,
    datasets.router,
    tasks.router,
]
