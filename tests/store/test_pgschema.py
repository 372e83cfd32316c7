"""The SQL generators of the PostgreSQL layout: monthly partitions and TimescaleDB."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pytest

from marketlake.errors import ConfigError
from marketlake.store.pgschema import (
    CAGG_BUCKETS,
    TimescaleOptions,
    check_interval,
    continuous_aggregate_ddl,
    hypertable_ddl,
    months_of,
    partition_ddl,
    partition_name,
    timescale_ddl,
    timescale_drop_ddl,
)


def test_partition_ddl_covers_exactly_one_utc_month() -> None:
    assert partition_ddl("bars", date(2024, 12, 17)) == [
        "CREATE TABLE IF NOT EXISTS bars_p2024_12 (LIKE bars INCLUDING ALL)",
        "ALTER TABLE bars ATTACH PARTITION bars_p2024_12 FOR VALUES FROM "
        "('2024-12-01 00:00:00+00') TO ('2025-01-01 00:00:00+00')",
    ]
    assert partition_name("trades", date(1999, 2, 1)) == "trades_p1999_02"


def test_only_bars_and_trades_are_partitioned() -> None:
    with pytest.raises(ValueError, match="not partitioned"):
        partition_ddl("jobs", date(2024, 1, 1))


def test_months_of_lists_each_utc_month_once() -> None:
    ts = [
        datetime(2024, 1, 31, 23, 59, tzinfo=UTC),
        datetime(2024, 2, 1, tzinfo=UTC),
        datetime(2023, 12, 5, tzinfo=UTC),
        datetime(2024, 2, 29, tzinfo=UTC),
    ]
    us = np.array([int(t.timestamp()) * 1_000_000 for t in ts], dtype=np.int64)
    assert months_of(us) == [date(2023, 12, 1), date(2024, 1, 1), date(2024, 2, 1)]
    assert months_of(np.array([], dtype=np.int64)) == []


def test_hypertable_ddl_chunks_compresses_by_symbol_and_keeps_retention() -> None:
    options = TimescaleOptions(
        chunk_interval="1 day", compress_after="14 days", retention="5 years"
    )
    assert hypertable_ddl("bars", "symbol, timeframe", options) == [
        "SELECT create_hypertable('bars', 'ts', chunk_time_interval => INTERVAL '1 day', "
        "if_not_exists => TRUE)",
        "ALTER TABLE bars SET (timescaledb.compress, timescaledb.compress_segmentby = "
        "'symbol, timeframe', timescaledb.compress_orderby = 'ts')",
        "SELECT add_compression_policy('bars', INTERVAL '14 days', if_not_exists => TRUE)",
        "SELECT add_retention_policy('bars', INTERVAL '5 years', if_not_exists => TRUE)",
    ]


def test_no_compression_and_no_retention_when_not_asked() -> None:
    statements = hypertable_ddl("trades", "symbol", TimescaleOptions(compress_after=None))
    assert len(statements) == 1
    assert statements[0].startswith("SELECT create_hypertable('trades', 'ts'")


def test_continuous_aggregate_rolls_one_minute_bars_up() -> None:
    create, policy = continuous_aggregate_ddl("1h")
    assert create == (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS bars_1h WITH (timescaledb.continuous) AS "
        "SELECT symbol, '1h'::text AS timeframe, time_bucket(INTERVAL '1 hour', ts) AS ts, "
        "first(open, ts) AS open, max(high) AS high, min(low) AS low, last(close, ts) AS close, "
        "sum(volume) AS volume, sum(trades)::bigint AS trades, "
        "sum(vwap * volume) / NULLIF(sum(volume), 0) AS vwap, 'cagg'::text AS source "
        "FROM bars WHERE timeframe = '1m' GROUP BY symbol, time_bucket(INTERVAL '1 hour', ts) "
        "WITH NO DATA"
    )
    assert policy == (
        "SELECT add_continuous_aggregate_policy('bars_1h', start_offset => INTERVAL '3 days', "
        "end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour', "
        "if_not_exists => TRUE)"
    )


def test_timescale_ddl_creates_the_extension_then_both_hypertables_then_aggregates() -> None:
    statements = timescale_ddl(TimescaleOptions(continuous_aggregates=("5m", "1d")))
    assert statements[0] == "CREATE EXTENSION IF NOT EXISTS timescaledb"
    hypertables = [s for s in statements if "create_hypertable" in s]
    assert [s.split("'")[1] for s in hypertables] == ["bars", "trades"]
    views = [s.split()[6] for s in statements if s.startswith("CREATE MATERIALIZED VIEW")]
    assert views == ["bars_5m", "bars_1d"]
    assert timescale_drop_ddl(TimescaleOptions(continuous_aggregates=("5m",))) == [
        "DROP MATERIALIZED VIEW IF EXISTS bars_5m"
    ]


def test_default_aggregates_are_the_standard_roll_ups() -> None:
    assert TimescaleOptions().continuous_aggregates == tuple(CAGG_BUCKETS)
    assert tuple(CAGG_BUCKETS) == ("5m", "15m", "30m", "1h", "4h", "1d")


@pytest.mark.parametrize("bad", ["", "soon", "0 days", "7", "-1 day", "1 fortnight"])
def test_a_malformed_interval_is_a_config_error_naming_the_setting(bad: str) -> None:
    with pytest.raises(ConfigError, match="MARKETLAKE_TIMESCALE_CHUNK_INTERVAL"):
        TimescaleOptions(chunk_interval=bad)


def test_intervals_are_normalised() -> None:
    assert check_interval(" 12   hours ", "X") == "12 hours"


def test_unknown_aggregate_timeframe_is_refused() -> None:
    with pytest.raises(ConfigError, match="no continuous aggregate for timeframe"):
        TimescaleOptions(continuous_aggregates=("7m",))
    with pytest.raises(ConfigError, match="RETENTION"):
        TimescaleOptions(retention="forever")
    with pytest.raises(ConfigError, match="COMPRESS_AFTER"):
        TimescaleOptions(compress_after="later")
