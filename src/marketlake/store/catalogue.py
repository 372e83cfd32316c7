"""The table catalogue as plain names: what the portable SQL of :mod:`marketlake.store.base`
checks column names and keys against, and the schema version, without SQLAlchemy.

:mod:`marketlake.store.tables` defines the tables (types, indexes) in SQLAlchemy Core;
importing it costs a quarter of a second, which every command that opens an up-to-date
DuckDB store would pay for these names only. A test checks that the two agree: adding a
table or a column means adding it in both (and bumping :data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

SCHEMA_VERSION = 3

COLUMNS: dict[str, tuple[str, ...]] = {
    "alert_rules": ("id", "definition", "created_at"),
    "alerts": ("id", "rule_id", "symbol", "ts", "kind", "value", "message", "seq"),
    "api_keys": ("id", "name", "prefix", "hash", "scopes", "created_at", "revoked_at"),
    "backtests": (
        "id",
        "status",
        "params",
        "stats",
        "trades",
        "equity",
        "error",
        "created_at",
        "finished_at",
    ),
    "bars": (
        "symbol",
        "timeframe",
        "ts",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "trades",
        "vwap",
        "source",
    ),
    "checkpoints": ("provider", "symbol", "timeframe", "last_ts", "job_id", "updated_at"),
    "corporate_actions": ("symbol", "ts", "kind", "value", "source"),
    "instruments": (
        "symbol",
        "name",
        "asset_class",
        "exchange",
        "currency",
        "timezone",
        "active",
        "auto_registered",
        "created_at",
        "updated_at",
    ),
    "jobs": (
        "id",
        "kind",
        "status",
        "params",
        "summary",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "owner",
        "heartbeat_at",
    ),
    "metrics": ("symbol", "name", "ts", "value"),
    "quality_findings": (
        "report_id",
        "rule",
        "severity",
        "symbol",
        "timeframe",
        "ts",
        "end_ts",
        "values",
        "message",
    ),
    "quality_reports": ("id", "job_id", "scope", "summary", "created_at"),
    "series_versions": ("symbol", "timeframe", "version"),
    "trades": ("symbol", "ts", "price", "size", "side", "trade_id", "source"),
}
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "alert_rules": ("id",),
    "alerts": ("id",),
    "api_keys": ("id",),
    "backtests": ("id",),
    "bars": (),
    "checkpoints": ("provider", "symbol", "timeframe"),
    "corporate_actions": ("symbol", "ts", "kind"),
    "instruments": ("symbol",),
    "jobs": ("id",),
    "metrics": ("symbol", "name"),
    "quality_findings": (),
    "quality_reports": ("id",),
    "series_versions": ("symbol", "timeframe"),
    "trades": (),
}
