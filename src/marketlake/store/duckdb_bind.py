"""Query parameters bound by DuckDB without it importing pandas first.

DuckDB's Python client compares every parameter that is not None with ``pandas.NaT``
and ``pandas.NA`` before anything else, importing pandas to do so when it is installed:
about 0.3 s, more than the rest of a command like ``marketlake keys create``. A value
can only be one of those once pandas is loaded, so while it is not, :func:`bound` makes
that one import fail in the binding thread; DuckDB then skips the comparison (and tries
the import again on a later call: nothing is cached). The values are bound as
parameters all the same; nothing is formatted into the SQL.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import duckdb


class _PandasNotLoaded:
    """An import finder that fails ``import pandas`` in the threads listed in ``threads``
    (only while they bind parameters, and only while pandas is not loaded)."""

    def __init__(self) -> None:
        self.threads: set[int] = set()

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        if name == "pandas" and threading.get_ident() in self.threads:
            raise ModuleNotFoundError("pandas is not loaded (DuckDB binds parameters)", name=name)


_NO_PANDAS = _PandasNotLoaded()
sys.meta_path.insert(0, _NO_PANDAS)


def bound(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any]
) -> duckdb.DuckDBPyConnection:
    """``con.execute(sql, params)`` without DuckDB importing pandas to bind the parameters."""
    if not params or "pandas" in sys.modules:
        return con.execute(sql, list(params))
    ident = threading.get_ident()
    _NO_PANDAS.threads.add(ident)
    try:
        return con.execute(sql, list(params))
    finally:
        _NO_PANDAS.threads.discard(ident)
