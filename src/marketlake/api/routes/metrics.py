"""Streaming analytics: ``GET /metrics/latest`` and ``GET /metrics/{symbol}``.

The worker stores the latest value of every metric per symbol (see
:mod:`marketlake.stream.analytics` for their definitions); these routes read them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from marketlake.api.deps import ReadAccess, StoreDep, SymbolDep, in_thread
from marketlake.api.errors import problem_responses
from marketlake.errors import NotFoundError
from marketlake.schema import normalize_symbol
from marketlake.store import Store

router = APIRouter(tags=["metrics"])


class SymbolMetrics(BaseModel):
    """The latest analytics of one symbol."""

    symbol: str = Field(examples=["BTCUSDT"])
    ts: datetime = Field(description="Time of the newest observation behind the values")
    metrics: dict[str, float | None] = Field(
        examples=[
            {
                "price": 67012.5,
                "return": 0.0004,
                "volatility": 0.42,
                "drawdown": -0.012,
                "max_drawdown": -0.031,
                "rolling_drawdown": -0.004,
                "rolling_max_drawdown": -0.009,
                "vwap": 66950.1,
                "volume": 1234.5,
                "bucket_volume": 12.3,
                "avg_bucket_volume": 9.8,
            }
        ]
    )


def read_metrics(store: Store, symbol: str | None = None) -> list[SymbolMetrics]:
    """Stored metrics grouped by symbol, in symbol order."""
    rows = store.latest_metrics(symbol)
    grouped: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = grouped.setdefault(
            row["symbol"], {"symbol": row["symbol"], "ts": row["ts"], "metrics": {}}
        )
        entry["metrics"][row["name"]] = row["value"]
        entry["ts"] = max(entry["ts"], row["ts"])
    return [SymbolMetrics(**entry) for entry in grouped.values()]


@router.get("/metrics/latest", response_model=list[SymbolMetrics], summary="Latest analytics")
async def latest(
    _: ReadAccess,
    store: StoreDep,
    symbol: Annotated[
        str | None, Query(description="Only this symbol", examples=["BTCUSDT"], max_length=64)
    ] = None,
) -> list[SymbolMetrics]:
    """The newest value of every metric of every symbol (or of ``symbol``)."""
    wanted = normalize_symbol(symbol) if symbol else None
    found: list[SymbolMetrics] = await in_thread(read_metrics, store, wanted)
    return found


@router.get(
    "/metrics/{symbol:path}",
    response_model=SymbolMetrics,
    summary="Analytics of a symbol",
    responses=problem_responses(404),
)
async def of_symbol(symbol: SymbolDep, _: ReadAccess, store: StoreDep) -> SymbolMetrics:
    """The newest value of every metric of one symbol."""
    found: list[SymbolMetrics] = await in_thread(read_metrics, store, symbol)
    if not found:
        raise NotFoundError(
            f"no metrics for {symbol} yet; they appear once a worker has "
            "processed live data of it (`marketlake stream`)"
        )
    return found[0]
