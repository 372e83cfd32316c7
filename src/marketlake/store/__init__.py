"""Stores: pick one by URI with :func:`open_store`.

``duckdb:///path/file.duckdb`` and ``duckdb:///:memory:`` open the embedded
store; ``postgresql://user@host:5432/db`` the server store.
"""

from __future__ import annotations

from marketlake.errors import ConfigError
from marketlake.store.base import BarPage, Coverage, Job, Store, WriteResult

__all__ = ["BarPage", "Coverage", "Job", "Store", "WriteResult", "backends", "open_store"]


def backends() -> list[type[Store]]:
    """Every store backend, in the order URIs are matched against them."""
    from marketlake.store.duckdb import DuckDBStore

    found: list[type[Store]] = [DuckDBStore]
    try:
        from marketlake.store.postgres import PostgresStore  # type: ignore[import-not-found, unused-ignore]
    except ImportError:  # the PostgreSQL backend is added by its own module
        return found
    found.append(PostgresStore)
    return found


def open_store(uri: str) -> Store:
    """Open the store a URI names; an unknown scheme raises :class:`ConfigError`."""
    for backend in backends():
        if backend.supports_uri(uri):
            return backend(uri)
    schemes = ", ".join(f"{s}://" for b in backends() for s in b.schemes)
    raise ConfigError(f"unknown store URI {uri!r}: use one of {schemes}")
