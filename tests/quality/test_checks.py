"""Quality in the store: ingest applies the policy and reports, stored series are checked,
reports are kept and found again, gaps are repaired from the provider."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pytest

from marketlake.config import Settings
from marketlake.errors import ConfigError, InputError, NotFoundError
from marketlake.ingest.jobs import IngestResult, run_ingest
from marketlake.ingest.repair import merge_gaps, repair_gaps, source_provider
from marketlake.providers.base import Provider
from marketlake.providers.synthetic import SyntheticProvider
from marketlake.quality.checks import validate_store
from marketlake.quality.gaps import Gap
from marketlake.quality.policy import QualityPolicy, latest_scores, list_reports, load_report
from marketlake.schema import Timeframe
from marketlake.store.base import Store
from marketlake.timeseries.aggregate import rollup
from tests.conftest import bars_for


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class TableProvider(Provider):
    """Serves fixed tables (filtered to the asked range) and records what was asked."""

    name: ClassVar[str] = "synthetic"
    timeframes: ClassVar[tuple[str, ...]] = ()
    needs_network: ClassVar[bool] = False

    def __init__(self, table: pa.Table) -> None:
        super().__init__(Settings(config_dir=Path("/nonexistent")))
        self.table = table
        self.asked: list[tuple[datetime, datetime]] = []

    async def fetch_bars(
        self, symbol: str, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> AsyncGenerator[pa.Table, None]:
        self.asked.append((start, end))
        ts = self.table.column("ts")
        mask = pa.compute.and_(
            pa.compute.greater_equal(ts, pa.scalar(start)), pa.compute.less(ts, pa.scalar(end))
        )
        rows = self.table.filter(mask)
        if rows.num_rows:
            yield rows


def ingest(store: Store, table: pa.Table, start: str, end: str, **kw: Any) -> IngestResult:
    provider = TableProvider(table)
    return asyncio.run(run_ingest(store, provider, ["BTCUSDT"], "1m", utc(start), utc(end), **kw))


def test_ingest_rejects_broken_bars_and_stores_the_job_report(duck: Store) -> None:
    table = bars_for("BTCUSDT", "1m", "2024-03-04", "2024-03-05")
    rows = table.to_pylist()
    rows[100]["high"] = rows[100]["low"] - 1.0
    result = ingest(
        duck,
        pa.Table.from_pylist(rows, schema=table.schema),
        "2024-03-04",
        "2024-03-05",
        rollup=False,
    )
    (symbol,) = result.symbols
    assert (symbol.fetched, symbol.inserted, symbol.rejected) == (1440, 1439, 1)
    report, findings = load_report(duck, result.quality_report or "")
    assert report["job_id"] == result.job_id
    assert report["scope"]["symbols"] == ["BTCUSDT"]
    assert [(f["rule"], f["ts"]) for f in findings] == [
        ("ohlc", utc("2024-03-04T01:40")),
        ("gap", utc("2024-03-04T01:40")),
    ]
    (series,) = report["summary"]["series"]
    assert (series["expected"], series["present"], series["rejected"]) == (1440, 1439, 1)
    assert duck.get_job(result.job_id).summary["quality_report"] == result.quality_report


def test_ingest_reports_missing_minutes_of_the_requested_range(duck: Store) -> None:
    table = bars_for("BTCUSDT", "1m", "2024-03-04T01:00", "2024-03-04T03:00")
    result = ingest(duck, table, "2024-03-04T00:30", "2024-03-04T03:00", rollup=False)
    _, findings = load_report(duck, result.quality_report or "")
    assert [(f["ts"], f["end_ts"], f["values"]) for f in findings] == [
        (utc("2024-03-04T00:30"), utc("2024-03-04T01:00"), {"missing": 30})
    ]
    assert result.symbols[0].score == 0.8


def test_ingest_rolls_up_only_the_buckets_it_touched(duck: Store) -> None:
    minutes = bars_for("BTCUSDT", "1m", "2024-03-04", "2024-03-06")
    first = ingest(duck, minutes, "2024-03-04", "2024-03-05")
    assert first.symbols[0].rolled_up > 0
    before = duck.read_bars("BTCUSDT", "1h").table
    second = ingest(duck, minutes, "2024-03-05", "2024-03-06")
    hours = duck.read_bars("BTCUSDT", "1h").table
    assert hours.num_rows == 48
    assert hours.slice(0, 24).equals(before)  # day one untouched
    assert hours.equals(rollup(minutes, "1h"))
    assert duck.read_bars("BTCUSDT", "1d").table.equals(rollup(minutes, "1d"))
    assert second.symbols[0].rolled_up == 24 + 96 + 288 + 6 + 1 + 1 + 1  # 1h,15m,5m,4h,1d,1w,1mo


def test_validate_store_checks_every_stored_series_and_saves_the_report(duck: Store) -> None:
    duck.write_bars(bars_for(["AAPL", "BTCUSDT"], "1m", "2024-03-04", "2024-03-06"))
    duck.write_bars(bars_for("AAPL", "1d", "2024-03-04", "2024-03-09"))
    report = validate_store(duck)
    assert sorted((s.symbol, s.timeframe, s.expected, s.score) for s in report.series) == [
        ("AAPL", "1d", 5, 1.0),
        ("AAPL", "1m", 780, 1.0),
        ("BTCUSDT", "1m", 2880, 1.0),
    ]
    (listed,) = list_reports(duck)
    assert listed["id"] == report.id
    assert listed["scope"]["symbols"] == ["AAPL", "BTCUSDT"]
    assert [s["timeframe"] for s in latest_scores(duck, "aapl")] == ["1d", "1m"]


def test_validating_a_symbol_without_bars_names_it(duck: Store) -> None:
    with pytest.raises(NotFoundError, match="no stored bars for MSFT at 1m"):
        validate_store(duck, ["msft"], ["1m"])


def test_unknown_report_is_not_found(duck: Store) -> None:
    with pytest.raises(NotFoundError, match="unknown quality report nope"):
        load_report(duck, "nope")


def test_finding_values_survive_the_round_trip_as_json(duck: Store) -> None:
    table = bars_for("BTCUSDT", "1m", "2024-03-04T00:00", "2024-03-04T00:10")
    rows = table.to_pylist()
    rows[3]["volume"] = float("nan")
    duck.write_bars(pa.Table.from_pylist(rows, schema=table.schema))
    report = validate_store(duck)
    _, findings = load_report(duck, report.id or "")
    assert findings[0]["values"] == {"volume": "nan"}
    assert json.loads(duck.select_rows("quality_reports")[0]["summary"])["counts"] == {"volume": 1}


def test_policy_comes_from_defaults_then_yaml_then_settings(tmp_path: Path) -> None:
    (tmp_path / "quality.yml").write_text("rules:\n  outlier: off\n  ohlc: flag\nstale_bars: 5\n")
    policy = QualityPolicy.from_settings(Settings(config_dir=tmp_path))
    assert (policy.action("outlier"), policy.action("ohlc"), policy.action("price")) == (
        "off",
        "flag",
        "reject",
    )
    assert policy.stale_bars == 5
    policy = QualityPolicy.from_settings(
        Settings(config_dir=tmp_path, quality_stale_bars=7, quality_rules={"ohlc": "reject"})
    )
    assert (policy.action("ohlc"), policy.stale_bars) == ("reject", 7)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules:\n  nope: flag\n", "unknown quality rule 'nope'"),
        (
            "rules:\n  ohlc: drop\n",
            "action 'drop' for rule 'ohlc' must be one of reject, flag, off",
        ),
        ("rules:\n  gap: reject\n", "rule 'gap' reports missing bars, which cannot be rejected"),
        ("stale: 3\n", "unknown key(s) stale"),
        ("rules: [\n", "not valid YAML"),
        ("- 1\n", "expected a mapping"),
    ],
)
def test_a_bad_quality_file_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "quality.yml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        QualityPolicy.from_settings(Settings(config_dir=tmp_path))


def test_repair_fetches_exactly_the_missing_ranges(duck: Store) -> None:
    minutes = bars_for("AAPL", "1m", "2024-03-04", "2024-03-07")
    ts = minutes.column("ts")
    holes = [
        (utc("2024-03-04T15:00"), utc("2024-03-04T15:30")),
        (utc("2024-03-05T20:59"), utc("2024-03-06T14:35")),
    ]
    keep = pa.array([not any(a <= t < b for a, b in holes) for t in ts.to_pylist()])
    duck.ensure_instruments(["AAPL"])
    duck.write_bars(minutes.filter(keep))
    provider = TableProvider(minutes)
    result = asyncio.run(repair_gaps(duck, provider, "aapl", "1m"))
    assert provider.asked == holes
    assert (result.missing_before, result.missing_after, result.filled) == (36, 0, 36)
    assert [(r.start, r.end, r.missing, r.inserted) for r in result.ranges] == [
        (holes[0][0], holes[0][1], 30, 30),
        (holes[1][0], holes[1][1], 6, 6),
    ]
    assert duck.read_bars("AAPL", "1m").table.equals(minutes)
    hours = rollup(minutes, "1h")  # the buckets of the filled span were rolled up
    touched = pa.compute.and_(
        pa.compute.greater_equal(hours.column("ts"), pa.scalar(utc("2024-03-04T15:00"))),
        pa.compute.less(hours.column("ts"), pa.scalar(utc("2024-03-06T15:00"))),
    )
    assert duck.read_bars("AAPL", "1h").table.equals(hours.filter(touched))
    job = duck.get_job(result.job_id)
    assert (job.kind, job.status, job.summary["filled"]) == ("repair", "succeeded", 36)


def test_repair_needs_stored_bars(duck: Store) -> None:
    duck.ensure_instruments(["AAPL"])
    with pytest.raises(NotFoundError, match="no 1m bars of AAPL are stored"):
        asyncio.run(repair_gaps(duck, SyntheticProvider(Settings()), "AAPL", "1m"))


def test_the_default_repair_provider_is_where_the_bars_came_from(duck: Store) -> None:
    duck.write_bars(bars_for("AAPL", "1m", "2024-03-04", "2024-03-05"))
    assert source_provider(duck, "AAPL", "1m") == "synthetic"
    duck.write_bars(
        bars_for("MSFT", "1m", "2024-03-04", "2024-03-05").set_column(
            10, "source", pa.array(["a-spreadsheet"] * 390)
        )
    )
    with pytest.raises(InputError, match=r"came from .a-spreadsheet.*pass --provider"):
        source_provider(duck, "MSFT", "1m")
    with pytest.raises(NotFoundError):
        source_provider(duck, "IBM", "1m")


def test_many_gaps_are_merged_nearest_first() -> None:
    gaps = [Gap(0, 10, 1), Gap(12, 20, 1), Gap(100, 110, 1), Gap(111, 120, 2)]
    assert merge_gaps(gaps, limit=2) == [Gap(0, 20, 2), Gap(100, 120, 3)]
    assert merge_gaps(gaps, limit=4) == gaps


def test_repair_records_a_failing_provider(duck: Store) -> None:
    class Broken(TableProvider):
        async def fetch_bars(
            self, symbol: str, timeframe: str | Timeframe, start: datetime, end: datetime
        ) -> AsyncGenerator[pa.Table, None]:
            from marketlake.errors import ProviderError

            raise ProviderError("vendor down")
            yield  # pragma: no cover

    minutes = bars_for("BTCUSDT", "1m", "2024-03-04T00:00", "2024-03-04T01:00")
    duck.ensure_instruments(["BTCUSDT"])
    duck.write_bars(minutes.filter(pa.array([i != 30 for i in range(60)])))
    result = asyncio.run(
        repair_gaps(
            duck, Broken(minutes), "BTCUSDT", "1m", end=utc("2024-03-04T01:00") + timedelta(0)
        )
    )
    assert result.ranges[0].error == "vendor down"
    assert duck.get_job(result.job_id).status == "failed"


def test_gap_scans_of_several_symbols_in_one_query_keep_each_symbol_apart(store: Store) -> None:
    """Symbols whose order differs between byte order and a database collation
    ("A.B" < "AB" by bytes) each get their own missing bars."""
    from marketlake.quality.checks import stored_gaps_of
    from marketlake.schema import Instrument, normalize_bars

    start = datetime(2024, 3, 4, tzinfo=UTC)
    missing = {"A.B": set(range(10, 15)), "AB": {30}, "A": set(), "Z-1": {0, 59}}
    for symbol, gone in missing.items():
        minutes = [m for m in range(60) if m not in gone]
        ts = [start + timedelta(minutes=m) for m in minutes]
        store.write_bars(
            normalize_bars(
                pa.table(
                    {
                        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                        "open": [1.0] * len(ts),
                        "high": [1.0] * len(ts),
                        "low": [1.0] * len(ts),
                        "close": [1.0] * len(ts),
                        "volume": [1.0] * len(ts),
                    }
                ),
                symbol=symbol,
                timeframe="1m",
                source="test",
            )
        )
    crypto = {s: Instrument(symbol=s, asset_class="crypto", timezone="UTC") for s in missing}
    scans = stored_gaps_of(store, crypto, Timeframe.parse("1m"), start, start + timedelta(hours=1))
    assert set(scans) == set(missing)
    for symbol, gone in missing.items():
        scan = scans[symbol]
        assert (scan.expected, scan.present) == (60, 60 - len(gone))
        gap_minutes = {
            int((g.start - to_us(start)) // 60_000_000) + k
            for g in scan.gaps
            for k in range(g.missing)
        }
        assert gap_minutes == gone


def to_us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)
