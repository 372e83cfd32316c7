"""Real-shaped CSV files (tests/data/csv, see generate.py there) import with the dates
and values they hold, with and without ``--tz``."""

from __future__ import annotations

import csv
import tempfile
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketlake.ingest.csv_import import import_csv
from marketlake.providers.csv.reader import CsvBarReader
from marketlake.schema import Timeframe
from marketlake.store import Store

DATA = Path(__file__).resolve().parents[1] / "data" / "csv"
ZONES = [
    "America/New_York",
    "Asia/Tokyo",
    "Pacific/Auckland",
    "Pacific/Kiritimati",
    "UTC",
    "America/Los_Angeles",
    "Europe/London",
    "Pacific/Pago_Pago",
]


def stored_dates(store: Store, symbol: str, timeframe: str = "1d") -> list[date]:
    table = store.read_bars(symbol, timeframe).table
    return [ts.date() for ts in table.column("ts").to_pylist()]


def file_dates(path: Path) -> list[date]:
    with path.open() as handle:
        return [date.fromisoformat(row["Date"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("tz", [None, "America/New_York", "Asia/Tokyo"])
def test_a_date_only_daily_file_keeps_its_dates_whatever_the_tz(
    duck: Store, tz: str | None
) -> None:
    path = DATA / "index_daily.csv"
    result = import_csv(duck, path, "SPX", timeframe="1d", tz=tz)
    expected = file_dates(path)
    assert len(expected) > 1200
    assert result.inserted == len(expected)
    assert stored_dates(duck, "SPX") == expected
    assert not any("relabelled" in note for note in result.notes)
    # every stored bar is a NYSE session: none on a weekend
    assert all(d.weekday() < 5 for d in stored_dates(duck, "SPX"))


@settings(max_examples=60, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    days=st.lists(
        st.dates(date(1990, 1, 1), date(2040, 12, 31)), min_size=1, max_size=30, unique=True
    ),
    stamp=st.sampled_from(["", " 00:00:00", "T00:00:00", "T00:00:00Z", "T00:00:00+00:00"]),
)
def test_any_daily_series_read_with_any_tz_keeps_its_dates(
    tz: str, days: list[date], stamp: str
) -> None:
    """The reader is what import-csv runs; the store only writes what it yields."""
    days = sorted(days)
    lines = ["Date,Open,High,Low,Close,Volume"]
    lines += [f"{d.isoformat()}{stamp},10,12,9,11,100" for d in days]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "daily.csv"
        path.write_text("\n".join(lines) + "\n")
        reader = CsvBarReader(path, "X", Timeframe.parse("1d"), tz)
        got = [
            ts.date() for batch in reader.batches() for ts in batch.bars.column("ts").to_pylist()
        ]
    assert got == days
