"""Settings: one object, read from ``MARKETLAKE_*`` environment variables (and ``.env``)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

DEFAULT_STORE_URI = "duckdb:///./data/marketlake.duckdb"
_URI_AUTHORITY = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)([^\s/?#]*)")
# The grammar of ``schema.Timeframe`` (which this lowest layer cannot import): N{m,h,d}, 1w, 1mo.
_TIMEFRAME = re.compile(r"^(?:[1-9][0-9]*(?:m|h|d)|1w|1mo)$")
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
_SETTINGS_FIELD = re.compile(r'field "([a-z0-9_]+)"')
_SECRET_PARAM = re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api_?key)=([^&\s]+)")


def redact(text: str) -> str:
    """``text`` with the password of every URI in it, and ``password=``-like query
    parameters, replaced by ``***``: the one way a URI or a message that may carry one
    is shown or logged (``postgresql://app:***@db/x``, ``redis://:***@cache:6379/0``)."""

    def authority(match: re.Match[str]) -> str:
        scheme, netloc = match.group(1), match.group(2)
        if "@" not in netloc:
            return match.group(0)
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        return f"{scheme}{user}:***@{host}" if has_password else match.group(0)

    return _SECRET_PARAM.sub(r"\1=***", _URI_AUTHORITY.sub(authority, text))


class Settings(BaseSettings):
    """Every MarketLake setting; each field maps to ``MARKETLAKE_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="MARKETLAKE_",
        env_file=".env",
        env_ignore_empty=True,  # `MARKETLAKE_X=` (as in .env.example) means "not set"
        extra="ignore",
        frozen=True,
    )

    store: str = Field(DEFAULT_STORE_URI, description="Store URI: duckdb:///FILE or postgresql://…")
    bus: str = Field("memory://", description="Event bus: memory:// or redis://host:port/db")
    data_dir: Path = Field(Path("./data"), description="Where the embedded store and exports live")
    config_dir: Path = Field(Path("./config"), description="YAML files: quality, alerts, schedule")
    csv_dir: Path = Field(Path("./data/csv"), description="Files <SYMBOL>.csv of the csv provider")

    yahoo_url: str = Field("https://query2.finance.yahoo.com", description="Yahoo chart API base")
    alpaca_url: str = Field("https://data.alpaca.markets", description="Alpaca market data base")
    alpaca_key_id: SecretStr | None = Field(None, description="Alpaca API key id")
    alpaca_secret_key: SecretStr | None = Field(None, description="Alpaca API secret key")
    alpaca_feed: str = Field("iex", description="Alpaca stock feed: iex (free) or sip")
    binance_url: str = Field("https://api.binance.com", description="Binance REST base")
    binance_ws_url: str = Field(
        "wss://stream.binance.com:9443", description="Binance websocket base"
    )
    ingest_concurrency: int = Field(4, ge=1, description="Symbols an ingest job fetches at once")
    ingest_batch_rows: int = Field(
        100_000, ge=1, description="Bars an ingest job buffers (all symbols) before a checked write"
    )
    import_one_transaction_mib: int = Field(
        256,
        ge=1,
        description="import-csv writes a file up to this size in one transaction; a larger "
        "one is checked first, then written in resumable parts (rerun the import to finish)",
    )
    rate_limit: bool = Field(
        True, description="Per-provider rate limiters; turn off only for a local mirror"
    )
    http_timeout_s: float = Field(30.0, description="Timeout of one provider HTTP request")

    api_host: str = Field("127.0.0.1", description="Bind address of `marketlake serve`")
    api_port: int = Field(8000, description="Port of `marketlake serve`")
    api_require_key_for_reads: bool = Field(False, description="Reads need an API key too")
    api_cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins")
    api_rate_limit_per_minute: int = Field(
        6000, description="Requests per key or client per minute"
    )
    api_jwks_url: str | None = Field(None, description="JWKS URL for JWT bearer tokens")
    api_jwt_audience: str | None = Field(None, description="Expected JWT audience")
    api_jwt_issuer: str | None = Field(None, description="Expected JWT issuer (iss)")
    api_jwt_default_scopes: list[str] = Field(
        default_factory=lambda: ["read"],
        description="Scopes of a valid JWT that carries no scope/scp/permissions claim",
    )
    api_key_cache_s: float = Field(
        5.0, description="Seconds a verified API key is remembered (a revocation takes this long)"
    )
    api_rate_limit_prefix: str = Field(
        "marketlake:ratelimit:", description="Redis key prefix of the rate limiter"
    )
    api_cache_max_rows: int = Field(
        1_000_000, description="Bars the API keeps in memory for hot series (0: no bar cache)"
    )
    api_cache_ttl_s: float = Field(
        1.0,
        description="Seconds cached values may be stale when other processes write a store "
        "without series versions (or with MARKETLAKE_API_CACHE_CHECK_MS=0)",
    )
    api_cache_check_ms: float = Field(
        250.0,
        ge=0,
        description="PostgreSQL: cached bars hold every write committed this long before "
        "the request (one query checks every cached series' version; 0: use the TTL)",
    )
    api_workers: int = Field(1, description="Worker processes of `marketlake serve`")
    api_access_log: bool = Field(True, description="Log one structured line per API request")
    api_max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body the API reads (larger: 413)"
    )
    api_trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses (or CIDR ranges) of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; from anyone else these headers are ignored",
    )
    api_sse_clients_per_client: int = Field(
        20, ge=1, description="Open SSE streams one API key or address may hold (more: 429)"
    )

    metrics_port: int = Field(
        9464, description="Port of the Prometheus endpoint of `marketlake worker` (0: none)"
    )

    bus_prefix: str = Field("marketlake:", description="Prefix of every Redis key of the bus")
    bus_shards: int = Field(
        8, ge=1, le=256, description="Redis streams the raw topic is split into by symbol"
    )
    bus_maxlen: int = Field(200_000, ge=100, description="Approximate entries kept per stream")
    bus_queue_size: int = Field(
        256, ge=1, description="memory:// queue bound in batches (backpressure)"
    )
    stream_batch_events: int = Field(500, ge=1, description="Events per bus entry, at most")
    stream_linger_ms: float = Field(20.0, ge=0, description="Longest wait to fill a bus entry")
    stream_buffer_events: int = Field(
        100_000,
        ge=1,
        description="Events a feed keeps while the bus is down; past this it stops reading",
    )
    stream_stall_s: float = Field(
        30.0, gt=0, description="Reconnect when the feed is silent this long"
    )
    stream_backoff_initial_s: float = Field(1.0, gt=0, description="First reconnect delay")
    stream_backoff_max_s: float = Field(60.0, gt=0, description="Longest reconnect delay")
    stream_max_connection_s: float = Field(
        23.5 * 3600, gt=0, description="Planned reconnect after this long (Binance cuts at 24 h)"
    )
    worker_lease_ttl_s: float = Field(
        10.0, gt=0, description="A dead worker's shards move after this long"
    )
    worker_fetch_entries: int = Field(64, ge=1, description="Bus entries a worker reads at once")
    worker_write_backlog_events: int = Field(
        200_000,
        ge=1,
        description="Processed events a worker holds unwritten before it stops reading",
    )
    analytics_window: int = Field(60, ge=2, description="Rolling window in buckets")
    analytics_bucket: str = Field("1m", description="Bucket of rolling analytics (a timeframe)")
    analytics_periods_per_year: float | None = Field(
        None, gt=0, description="Annualisation; default: buckets in 365 days (crypto, 24/7)"
    )
    alerts_reload_s: float = Field(2.0, gt=0, description="How often alert rules are re-read")
    alert_rules_file: Path | None = Field(
        None,
        description="Alert rules YAML (unset: alert_rules.yml in the config dir); "
        "`marketlake serve --alerts FILE` sets it",
    )

    timescale: Literal["auto", "on", "off"] = Field(
        "auto",
        description="`marketlake migrate` on PostgreSQL: make bars and trades TimescaleDB "
        "hypertables when the extension is available (auto), always (on) or never (off)",
    )
    timescale_chunk_interval: str = Field("7 days", description="TimescaleDB chunk length")
    timescale_compress_after: str = Field(
        "30 days", description="Compress TimescaleDB chunks older than this ('never': don't)"
    )
    timescale_retention: str | None = Field(
        None, description="Drop TimescaleDB chunks older than this (unset: keep everything)"
    )
    quality_rules: dict[str, str] = Field(
        default_factory=dict,
        description="Action per quality rule (reject, flag or off) as JSON, e.g. "
        '{"outlier": "off"}; overrides config/quality.yml',
    )
    quality_stale_bars: int = Field(
        10, ge=2, description="Identical closes in a row that make a stale price"
    )
    quality_outlier_z: float = Field(10.0, gt=0, description="Robust z-score of an outlier return")
    quality_split_tolerance: float = Field(
        0.03, gt=0, lt=0.5, description="Relative distance of a jump from a split ratio"
    )
    quality_split_window_days: int = Field(
        3, ge=0, description="Days around a recorded split in which jumps are expected"
    )
    quality_max_findings: int = Field(
        1000, ge=1, description="Findings kept per rule and series in a report (counts stay exact)"
    )
    rollup_after_ingest: bool = Field(True, description="Roll new bars up after every ingest")
    rollup_timeframes: list[str] = Field(
        default_factory=lambda: ["5m", "15m", "1h", "4h", "1d", "1w", "1mo"],
        description="Timeframes automatic roll-ups build (those coarser than what was ingested)",
    )
    rollup_replace_sources: bool = Field(
        False,
        description="Let roll-ups overwrite stored bars of another source (by default a bar "
        "a provider delivered at a timeframe is kept and the summary says so)",
    )

    log_level: str = Field("INFO", description="Log level: CRITICAL, ERROR, WARNING, INFO or DEBUG")
    log_json: bool = Field(False, description="Log as JSON lines instead of console text")

    def alert_rules_path(self) -> Path:
        """The alert rules file: ``alert_rules_file``, else ``<config_dir>/alert_rules.yml``."""
        return self.alert_rules_file or self.config_dir / "alert_rules.yml"

    @field_validator("rollup_timeframes")
    @classmethod
    def _timeframes(cls, value: list[str]) -> list[str]:
        for item in value:
            _check_timeframe(item)
        return value

    @field_validator("analytics_bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        return _check_timeframe(value)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level == "WARN":
            level = "WARNING"
        if level not in _LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}: use one of {', '.join(_LOG_LEVELS)}")
        assert isinstance(logging.getLevelName(level), int)
        return level


def _check_timeframe(value: str) -> str:
    if not _TIMEFRAME.match(value.strip()):
        raise ValueError(
            f"unknown timeframe {value!r}: use N followed by m, h or d (for example 5m, 1h, "
            "1d), or 1w or 1mo"
        )
    return value.strip()


class SettingsInvalid(ValueError):
    """A ``MARKETLAKE_*`` value that cannot be used; the message is one line naming the
    variable and the fix (the CLI and ``connect()`` raise it as a ConfigError: this
    lowest layer does not import the exception tree)."""


def load_settings(**values: Any) -> Settings:
    """:class:`Settings` from the environment (and ``values``); a bad ``MARKETLAKE_*``
    value raises :class:`SettingsInvalid` with one line naming the variable and the fix."""
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = f"MARKETLAKE_{str(first['loc'][0]).upper()}" if first["loc"] else "a setting"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsInvalid(f"setting {name}: {message}") from None
    except SettingsError as exc:
        found = _SETTINGS_FIELD.search(str(exc))
        name = f"MARKETLAKE_{found.group(1).upper()}" if found else "a MARKETLAKE_ variable"
        raise SettingsInvalid(
            f"setting {name} is not valid JSON; list settings take a JSON list "
            "(e.g. '[\"https://app.example\"]'), mapping settings a JSON object "
            '(e.g. \'{"outlier": "off"}\')'
        ) from None
