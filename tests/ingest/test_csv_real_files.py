"""Real-shaped CSV files (tests/data/csv, see generate.py there) import with the dates
and values they hold, with and without ``--tz``."""

from __future__ import annotations

import csv
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketlake.cli.app import cli
from marketlake.errors import DataError, InputError
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


def rows_of(store: Store, symbol: str, timeframe: str) -> list[dict[str, object]]:
    return store.read_bars(symbol, timeframe).table.to_pylist()


def test_a_headerless_binance_kline_dump_maps_count_to_trades_and_vwap_from_quote_volume(
    duck: Store,
) -> None:
    for name in ("BTCUSDT-1m-2024-03-04.csv", "BTCUSDT-1m-2024-03-04-header.csv"):
        result = import_csv(duck, DATA / name, "BTCUSDT", on_conflict="replace")
        assert result.timeframe == "1m"
        assert "a Binance kline file: trades = count, vwap = quote_volume / volume" in (
            result.notes
        ) or name.endswith("header.csv")
    raw = (DATA / "BTCUSDT-1m-2024-03-04.csv").read_text().split()
    stored = rows_of(duck, "BTCUSDT", "1m")
    assert len(stored) == len(raw)
    for line, bar in zip(raw, stored, strict=True):
        f = line.split(",")
        assert bar["ts"] == datetime.fromtimestamp(int(f[0]) / 1000, UTC)
        assert (bar["open"], bar["close"], bar["volume"]) == (float(f[1]), float(f[4]), float(f[5]))
        assert bar["trades"] == int(f[8])  # count, not the close time
        if float(f[5]) == 0:  # a minute without trades has no vwap
            assert bar["vwap"] is None
            continue
        assert bar["vwap"] == pytest.approx(float(f[7]) / float(f[5]))
        assert bar["low"] <= bar["vwap"] <= bar["high"]


def test_the_headered_binance_dump_equals_the_headerless_one(duck: Store) -> None:
    import_csv(duck, DATA / "BTCUSDT-1m-2024-03-04.csv", "BTCUSDT")
    again = import_csv(duck, DATA / "BTCUSDT-1m-2024-03-04-header.csv", "BTCUSDT")
    assert (again.inserted, again.duplicates, again.conflicts) == (0, again.rows, 0)


def test_a_yfinance_multi_header_download_imports_with_its_dates(duck: Store) -> None:
    path = DATA / "yfinance_multiheader.csv"
    result = import_csv(duck, path, "AAPL", tz="America/New_York")
    lines = path.read_text().split()[3:]
    stored = rows_of(duck, "AAPL", "1d")
    assert result.inserted == len(lines) == len(stored)
    for line, bar in zip(lines, stored, strict=True):
        day, close, high, low, open_, volume = line.split(",")
        assert bar["ts"].date() == date.fromisoformat(day)
        assert (bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"]) == (
            float(open_),
            float(high),
            float(low),
            float(close),
            float(volume),
        )
    assert "a yfinance download (three header rows)" in result.notes


def test_a_yfinance_file_of_several_tickers_is_refused(tmp_path: Path, duck: Store) -> None:
    path = tmp_path / "two.csv"
    path.write_text(
        "Price,Close,Close,Open,Open\nTicker,AAPL,MSFT,AAPL,MSFT\nDate,,,,\n2024-03-04,1,2,1,2\n"
    )
    with pytest.raises(InputError, match="yfinance download of 2 tickers"):
        import_csv(duck, path, "AAPL")


def test_us_dates_name_the_first_unreadable_time_with_and_without_a_timeframe(
    duck: Store,
) -> None:
    path = DATA / "us_dates.csv"
    with pytest.raises(InputError, match=r"line 2, column Date '03/01/2024': is not a time"):
        import_csv(duck, path, "AAPL")
    with pytest.raises(DataError, match=r"line 2, column Date '03/01/2024': is not a time"):
        import_csv(duck, path, "AAPL", timeframe="1d")
    assert duck.count_bars() == 0
    result = import_csv(duck, path, "AAPL", date_format="%m/%d/%Y", tz="America/New_York")
    expected = [
        date(int(line[6:10]), int(line[:2]), int(line[3:5]))
        for line in path.read_text().split()[1:]
    ]
    assert stored_dates(duck, "AAPL") == expected
    assert expected[1] == date(2024, 3, 4)  # 03/04 is 4 March
    assert result.inserted == len(expected)


def test_a_date_that_does_not_match_the_date_format_says_so(duck: Store, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("Date,Open,High,Low,Close\n03/04/2024,1,2,1,2\n2024-03-05,1,2,1,2\n")
    with pytest.raises(DataError, match=r"line 3, column Date '2024-03-05': does not match"):
        import_csv(duck, path, "AAPL", timeframe="1d", date_format="%m/%d/%Y")


def test_a_one_row_bad_file_without_a_timeframe_reports_the_bad_value(
    duck: Store, tmp_path: Path
) -> None:
    path = tmp_path / "one.csv"
    path.write_text("Date,Open,High,Low,Close\n31.12.2023,1,2,1,2\n")
    with pytest.raises(InputError, match=r"line 2, column Date '31.12.2023': is not a time"):
        import_csv(duck, path, "AAPL")
    result = import_csv(duck, path, "BTC-USD", timeframe="1d", date_format="%d.%m.%Y")
    assert stored_dates(duck, "BTC-USD") == [date(2023, 12, 31)]
    assert result.inserted == 1


def test_decimal_commas_need_decimal_comma_and_say_so(duck: Store) -> None:
    path = DATA / "decimal_comma.csv"
    with pytest.raises(
        DataError, match=r"'180,00': is not a number \(a decimal comma\? pass --decimal ,\)"
    ):
        import_csv(duck, path, "AAPL", delimiter=";")
    result = import_csv(duck, path, "AAPL", delimiter=";", decimal=",")
    us = rows_of(duck, "AAPL", "1d")
    assert result.inserted == 20
    assert (us[0]["open"], us[0]["high"], us[0]["low"], us[0]["close"]) == (
        180.0,
        181.62,
        179.69,
        180.01,
    )
    with pytest.raises(InputError, match="--decimal , needs another column separator"):
        import_csv(duck, path, "AAPL", decimal=",")


def test_metatrader_exports_import_with_their_dotted_dates(duck: Store) -> None:
    daily = import_csv(duck, DATA / "metatrader4_daily.csv", "EURUSD")
    lines = (DATA / "metatrader4_daily.csv").read_text().split()
    assert stored_dates(duck, "EURUSD") == [date(*map(int, line[:10].split("."))) for line in lines]
    assert daily.timeframe == "1d"
    hourly = import_csv(
        duck, DATA / "metatrader5_h1.csv", "EURUSD", delimiter="\t", tz="Europe/Athens"
    )
    assert hourly.timeframe == "1h"
    first = rows_of(duck, "EURUSD", "1h")[0]
    assert first["ts"] == datetime(2024, 3, 1, 7, tzinfo=UTC)  # 09:00 in Athens (UTC+2)
    assert first["open"] == 1.08984
    assert "ignored columns: <TICKVOL>, <SPREAD>" in hourly.notes


def test_the_cli_takes_date_format_and_decimal_and_exits_2_with_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"duckdb:///{tmp_path}/s.duckdb"
    us = str(DATA / "us_dates.csv")
    assert cli(["--store", store, "import-csv", us, "-s", "AAPL"]) == 2
    err = capsys.readouterr().err
    assert "line 2, column Date '03/01/2024'" in err
    assert "Traceback" not in err
    args = ["--store", store, "import-csv", us, "-s", "AAPL", "--date-format", "%m/%d/%Y", "--json"]
    assert cli(args) == 0
    assert '"inserted": 20' in capsys.readouterr().out
    comma = str(DATA / "decimal_comma.csv")
    args = [
        "--store",
        store,
        "import-csv",
        comma,
        "-s",
        "MSFT",
        "--delimiter",
        ";",
        "--decimal",
        ",",
    ]
    assert cli([*args, "--json"]) == 0
