"""The Python API: ``lake = marketlake.connect(...)``, the same data and operations as the CLI.

``connect()`` opens the configured store (``MARKETLAKE_STORE``), ``connect("duckdb:///…")``
or ``connect("postgresql://…")`` a store in this process (the local transport), and
``connect("http://host:8000", api_key=…)`` a MarketLake server over its REST API (the
remote transport; bulk data travels as Arrow IPC). Both transports answer the same
calls with equal frames. See ``docs/python.md``.
"""

from __future__ import annotations

from marketlake.client.lake import BacktestRun, Lake, ValidationReport, connect

__all__ = ["BacktestRun", "Lake", "ValidationReport", "connect"]
