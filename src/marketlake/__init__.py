"""MarketLake: a market-data platform.

Ingest bars and trades from providers, validate them, store them as time
series, roll them up, serve them over a REST/SSE API and a CLI, run streaming
analytics and alerts, and backtest strategies on stored data.

From Python::

    import marketlake as ml
    lake = ml.connect()                      # the configured store (or its server)
    df = lake.bars("AAPL", "1d", start="2024-01-01")

``import marketlake`` imports nothing heavy: :func:`connect` loads the client on
first use (see ``docs/python.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from marketlake.client import BacktestRun, Lake, ValidationReport, connect

__all__ = ["BacktestRun", "Lake", "ValidationReport", "__version__", "connect"]


def __getattr__(name: str) -> Any:
    """``connect``, ``Lake``, ``BacktestRun`` and ``ValidationReport`` are imported when
    first used."""
    if name in ("connect", "Lake", "BacktestRun", "ValidationReport"):
        from marketlake import client

        return getattr(client, name)
    raise AttributeError(f"module 'marketlake' has no attribute {name!r}")
