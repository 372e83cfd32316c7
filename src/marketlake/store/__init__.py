"""Stores: pick one by URI with :func:`open_store`.

``duckdb:///path/file.duckdb`` and ``duckdb:///:memory:`` open the embedded
store; ``postgresql://user@host:5432/db`` the server store.
"""

from __future__ import annotations

from marketlake.errors import ConfigError
from marketlake.store.base import BarPage, Coverage, Job, Store, WriteResult

__all__ = [
    "BarPage",
    "Coverage",
    "Job",
    "Store",
    "WriteResult",
    "backends",
    "is_postgres",
    "open_store",
]


# URI scheme → (module, class) of its backend, in the order URIs are matched. A backend's
# module is imported only for a URI it opens: the DuckDB store never loads psycopg.
_BACKENDS: dict[str, tuple[str, str]] = {
    "duckdb": ("marketlake.store.duckdb", "DuckDBStore"),
    "postgresql": ("marketlake.store.postgres", "PostgresStore"),
    "postgres": ("marketlake.store.postgres", "PostgresStore"),
}


def _backend(module: str, name: str) -> type[Store] | None:
    """The backend class ``name`` of ``module``; None when its driver is not installed."""
    import importlib

    try:
        found: type[Store] = getattr(importlib.import_module(module), name)
    except ImportError:
        if module != "marketlake.store.postgres":  # only that one is optional (psycopg)
            raise
        return None
    return found


def is_postgres(uri: str) -> bool:
    """True for a URI of the PostgreSQL store (without importing its backend)."""
    return any(
        uri.startswith(f"{scheme}:")
        for scheme, (module, _) in _BACKENDS.items()
        if module == "marketlake.store.postgres"
    )


def backends() -> list[type[Store]]:
    """Every store backend, in the order URIs are matched against them (imports them all)."""
    found: list[type[Store]] = []
    for module, name in dict.fromkeys(_BACKENDS.values()):
        backend = _backend(module, name)
        if backend is not None:
            found.append(backend)
    return found


def open_store(uri: str) -> Store:
    """Open the store a URI names; an unknown scheme raises :class:`ConfigError`."""
    for scheme, (module, name) in _BACKENDS.items():
        if uri.startswith(f"{scheme}:"):
            backend = _backend(module, name)
            if backend is not None and backend.supports_uri(uri):
                return backend(uri)
    schemes = ", ".join(f"{s}://" for b in backends() for s in b.schemes)
    raise ConfigError(f"unknown store URI {uri!r}: use one of {schemes}")
