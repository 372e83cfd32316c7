"""CSV import: header mapping, time formats, row rules, fail/skip, malformed files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from marketlake.cli.app import cli
from marketlake.errors import DataError, InputError
from marketlake.ingest.csv_import import import_csv
from marketlake.quality.policy import RULES, QualityPolicy, load_report
from marketlake.store import Store, open_store

GOOD = """Date,Open,High,Low,Close,Volume
2024-03-04,10,12,9,11,1000
2024-03-05,11,13,10,12,1100
2024-03-06,12,14,11,13,1200
"""

# Files of every calendar day (weekends included): the closed_day rule would reject those.
EVERY_DAY = QualityPolicy().with_actions(closed_day="off")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def write(tmp_path: Path, text: str | bytes, name: str = "bars.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def closes(
    store: Store, symbol: str = "AAPL", timeframe: str = "1d"
) -> list[tuple[datetime, float]]:
    table = store.read_bars(symbol, timeframe).table
    return list(zip(table.column("ts").to_pylist(), table.column("close").to_pylist(), strict=True))


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return f"duckdb:///{tmp_path}/store.duckdb"


@pytest.fixture
def file_store(store_uri: str) -> Iterator[Store]:
    store = open_store(store_uri)
    yield store
    store.close()


# -- headers and time formats ----------------------------------------------------------


def test_a_yahoo_style_file_is_imported_with_adj_close_ignored(duck: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "2024-03-04,10,12,9,11,10.5,1000\n2024-03-05,11,13,10,12,11.5,1100\n",
    )
    result = import_csv(duck, path, "aapl")
    assert (result.inserted, result.timeframe, result.symbol) == (2, "1d", "AAPL")
    assert closes(duck) == [(utc(2024, 3, 4), 11.0), (utc(2024, 3, 5), 12.0)]
    assert "ignored columns: Adj Close" in result.notes
    row = duck.read_bars("AAPL", "1d").table.to_pylist()[0]
    assert (row["open"], row["high"], row["low"], row["volume"], row["source"]) == (
        10.0,
        12.0,
        9.0,
        1000.0,
        "csv",
    )


def test_adj_close_stands_in_when_there_is_no_close(duck: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path, "date,open,high,low,adj_close\n2024-03-04,10,12,9,11\n2024-03-05,11,13,10,12\n"
    )
    import_csv(duck, path, "AAPL")
    assert closes(duck) == [(utc(2024, 3, 4), 11.0), (utc(2024, 3, 5), 12.0)]


@pytest.mark.parametrize(
    ("header", "first", "second"),
    [
        ("timestamp", "1709562600", "1709562660"),  # epoch seconds
        ("TIMESTAMP", "1709562600000", "1709562660000"),  # epoch milliseconds
        ("Time", "1709562600000000", "1709562660000000"),  # epoch microseconds
        ("datetime", "2024-03-04T14:30:00Z", "2024-03-04T14:31:00Z"),
        ("DateTime", "2024-03-04 15:30:00+01:00", "2024-03-04 15:31:00+01:00"),
        ("date", "2024-03-04T14:30:00.000Z", "2024-03-04T14:31:00.000Z"),
    ],
)
def test_epoch_and_iso_times_all_mean_the_same_instant(
    duck: Store, tmp_path: Path, header: str, first: str, second: str
) -> None:
    path = write(
        tmp_path,
        f"{header},OPEN,High,low,Close,volume\n{first},10,12,9,11,5\n{second},11,13,10,12,6\n",
    )
    result = import_csv(duck, path, "AAPL")
    assert result.timeframe == "1m"
    assert closes(duck, timeframe="1m") == [
        (utc(2024, 3, 4, 14, 30), 11.0),
        (utc(2024, 3, 4, 14, 31), 12.0),
    ]


def test_separate_date_and_time_columns_are_joined_in_the_given_timezone(
    duck: Store, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "Date,Time,Open,High,Low,Close,Volume\n"
        "2024-03-04,09:30:00,10,12,9,11,5\n2024-07-01,09:30,11,13,10,12,6\n",
    )
    import_csv(duck, path, "AAPL", timeframe="1m", tz="America/New_York")
    assert closes(duck, timeframe="1m") == [
        (utc(2024, 3, 4, 14, 30), 11.0),
        (utc(2024, 7, 1, 13, 30), 12.0),
    ]


def test_a_file_without_header_uses_the_usual_column_order(duck: Store, tmp_path: Path) -> None:
    path = write(tmp_path, "1709510400,10,12,9,11,1000\n1709596800,11,13,10,12,1100\n")
    result = import_csv(duck, path, "AAPL")
    assert result.inserted == 2
    assert closes(duck) == [(utc(2024, 3, 4), 11.0), (utc(2024, 3, 5), 12.0)]


def test_optional_trades_and_vwap_columns_are_read(duck: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "date,open,high,low,close,volume,trades,vwap,ticker\n"
        "2024-03-04,10,12,9,11,1000,57,10.5,X\n2024-03-05,11,13,10,12,1100,,,X\n",
    )
    result = import_csv(duck, path, "AAPL")
    rows = duck.read_bars("AAPL", "1d").table.to_pylist()
    assert [(r["trades"], r["vwap"]) for r in rows] == [(57, 10.5), (None, None)]
    assert "ignored columns: ticker" in result.notes


def test_a_file_without_volume_gets_zero_volume(duck: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path, "date,open,high,low,close\n2024-03-04,10,12,9,11\n2024-03-05,11,13,10,12\n"
    )
    import_csv(duck, path, "^GSPC")
    assert duck.read_bars("^GSPC", "1d").table.column("volume").to_pylist() == [0.0, 0.0]


def test_another_delimiter_can_be_given(duck: Store, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace(",", ";"))
    assert import_csv(duck, path, "AAPL", delimiter=";").inserted == 3


def test_naive_times_are_read_in_the_given_timezone_across_dst(duck: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "datetime,open,high,low,close,volume\n"
        "2024-03-08 09:30:00,10,12,9,11,5\n2024-03-11 09:30:00,11,13,10,12,6\n",
    )
    import_csv(duck, path, "AAPL", timeframe="1m", tz="America/New_York")
    assert [ts for ts, _ in closes(duck, timeframe="1m")] == [
        utc(2024, 3, 8, 14, 30),
        utc(2024, 3, 11, 13, 30),
    ]


def test_daily_bars_are_labelled_with_their_trading_date(duck: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "datetime,open,high,low,close,volume\n"
        "2024-03-04T14:30:00Z,10,12,9,11,5\n2024-03-05T23:30:00-05:00,11,13,10,12,6\n",
    )
    result = import_csv(duck, path, "AAPL", timeframe="1d", tz="America/New_York")
    assert [ts for ts, _ in closes(duck)] == [utc(2024, 3, 4), utc(2024, 3, 5)]
    assert any("2 times relabelled" in note for note in result.notes)


def test_weekly_bars_are_labelled_with_their_monday(duck: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "date,open,high,low,close,volume\n2024-03-08,10,12,9,11,5\n2024-03-15,11,13,10,12,6\n",
    )
    result = import_csv(duck, path, "AAPL")
    assert result.timeframe == "1w"
    assert [ts for ts, _ in closes(duck, timeframe="1w")] == [utc(2024, 3, 4), utc(2024, 3, 11)]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (["2024-03-04T14:30:00Z", "2024-03-04T14:35:00Z", "2024-03-04T14:45:00Z"], "5m"),
        (["2024-03-04T14:00:00Z", "2024-03-04T15:00:00Z", "2024-03-04T16:00:00Z"], "1h"),
        (["2024-03-01", "2024-03-04", "2024-03-05", "2024-03-06"], "1d"),
        (["2024-01-01", "2024-02-01", "2024-03-01"], "1mo"),
    ],
)
def test_the_timeframe_is_inferred_from_the_spacing(
    duck: Store, tmp_path: Path, rows: list[str], expected: str
) -> None:
    text = "time,open,high,low,close,volume\n" + "".join(f"{r},10,12,9,11,5\n" for r in rows)
    assert import_csv(duck, write(tmp_path, text), "AAPL").timeframe == expected


def test_a_single_row_needs_an_explicit_timeframe(duck: Store, tmp_path: Path) -> None:
    path = write(tmp_path, "time,open,high,low,close,volume\n2024-03-04T14:30:00Z,10,12,9,11,5\n")
    with pytest.raises(InputError, match="pass --timeframe"):
        import_csv(duck, path, "AAPL")
    assert import_csv(duck, path, "AAPL", timeframe="1m").inserted == 1


# -- idempotency and jobs ---------------------------------------------------------------


def test_importing_a_file_twice_adds_nothing(duck: Store, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert import_csv(duck, path, "AAPL").inserted == 3
    again = import_csv(duck, path, "AAPL")
    assert (again.inserted, again.duplicates, again.conflicts) == (0, 3, 0)


def test_changed_values_are_conflicts_unless_replace(duck: Store, tmp_path: Path) -> None:
    import_csv(duck, write(tmp_path, GOOD), "AAPL")
    changed = write(tmp_path, GOOD.replace("14,11,13,1200", "14,11,12.5,1200"), "changed.csv")
    result = import_csv(duck, changed, "AAPL")
    assert (result.inserted, result.duplicates, result.conflicts) == (0, 2, 1)
    assert closes(duck)[2] == (utc(2024, 3, 6), 13.0)
    replaced = import_csv(duck, changed, "AAPL", on_conflict="replace")
    assert (replaced.replaced, replaced.conflicts) == (1, 0)
    assert closes(duck)[2] == (utc(2024, 3, 6), 12.5)


def test_an_import_registers_the_symbol_and_records_a_job(duck: Store, tmp_path: Path) -> None:
    result = import_csv(duck, write(tmp_path, GOOD), "AAPL")
    assert bool(duck.auto_registered(["AAPL"]))
    job = duck.get_job(result.job_id)
    assert (job.kind, job.status, job.summary["inserted"]) == ("import", "succeeded", 3)


def test_progress_is_reported_in_bytes_and_rows(duck: Store, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    calls: list[tuple[int, int, int]] = []
    import_csv(duck, path, "AAPL", progress=lambda *a: calls.append(a))
    size = path.stat().st_size
    assert calls[-1] == (size, size, 3)


# -- bad rows ----------------------------------------------------------------------------

BAD_ROWS = [
    ("2024-03-05,11,13,10,abc,1100", "line 3, column Close 'abc': is not a number"),
    ("2024-03-05,11,9.5,10.1,10.1,1100", "line 3, column High '9.5': high 9.5 is below low 10.1"),
    ("2024-03-05,11,13,10,12,-5", "line 3, column Volume '-5': volume must not be negative"),
    ("2024-03-05,NaN,13,10,12,1100", "line 3, column Open 'nan': is NaN"),
    ("2024-03-05,11,13,0,12,1100", "line 3, column Low '0': must be a positive price"),
    ("2024-03-05,11,13,10,,1100", "line 3, column Close: is empty"),
    ("2024-03-05,11,12,10,12.5,1100", "line 3, column High '12': high 12 is below close 12.5"),
    ("2024-03-05,11,13,11.5,12,1100", "line 3, column Low '11.5': low 11.5 is above open 11"),
    ("2024-03-05,11,13,10,12", "line 3: has 5 fields, expected 6"),
    ("yesterday,11,13,10,12,1100", "line 3, column Date 'yesterday': is not a time"),
    (
        "2024-03-04,11,13,10,12,1100",
        "line 3, column Date '2024-03-04T00:00:00Z': repeats the time of line 2 with other values",
    ),
]


@pytest.mark.parametrize(("line", "message"), BAD_ROWS)
def test_with_fail_a_bad_row_aborts_and_writes_nothing(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    text = GOOD.splitlines()
    path = write(tmp_path, "\n".join([text[0], text[1], line, *text[2:]]) + "\n")
    code = cli(["--store", store_uri, "import-csv", str(path), "--symbol", "AAPL"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "--on-error skip" in err
    assert len(err.strip().splitlines()) == 1
    with open_store(store_uri) as store:
        assert store.count_bars() == 0
        assert store.list_instruments() == []
        assert store.list_jobs()[0].status == "failed"


def test_with_skip_good_rows_are_written_and_every_bad_line_listed(
    duck: Store, tmp_path: Path
) -> None:
    lines = [
        GOOD.splitlines()[0],
        "2024-03-01,10,12,9,11,1000",
        *[b[0] for b in BAD_ROWS[:-1]],
        "2024-03-07,12,14,11,13,1200",
    ]
    result = import_csv(
        duck, write(tmp_path, "\n".join(lines) + "\n"), "AAPL", timeframe="1d", on_error="skip"
    )
    expected = [
        message.replace("line 3", f"line {n}")
        for n, (_, message) in enumerate(BAD_ROWS[:-1], start=3)
    ]
    assert [str(b)[: len(m)] for b, m in zip(result.skipped, expected, strict=True)] == expected
    assert (result.rows, result.inserted, result.status) == (12, 2, "partial")
    assert [ts for ts, _ in closes(duck)] == [utc(2024, 3, 1), utc(2024, 3, 7)]


def test_the_same_row_twice_is_a_harmless_duplicate(duck: Store, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "2024-03-04,10,12,9,11,1000\n")
    result = import_csv(duck, path, "AAPL")
    assert (result.inserted, result.duplicates, result.skipped) == (3, 1, [])


def test_a_misaligned_intraday_time_is_a_bad_row(duck: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "time,open,high,low,close,volume\n2024-03-04T14:30:00Z,10,12,9,11,5\n"
        "2024-03-04T14:31:30Z,10,12,9,11,5\n",
    )
    with pytest.raises(DataError, match=r"line 3, column time .*not on a 1m bar boundary"):
        import_csv(duck, path, "AAPL", timeframe="1m")


def test_a_local_time_skipped_by_dst_is_a_bad_row(duck: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "datetime,open,high,low,close,volume\n2024-03-10 01:00:00,10,12,9,11,5\n"
        "2024-03-10 02:00:00,10,12,9,11,5\n2024-03-10 03:00:00,10,12,9,11,5\n",
    )
    result = import_csv(duck, path, "AAPL", timeframe="1h", tz="America/New_York", on_error="skip")
    assert [str(b) for b in result.skipped] == [
        "line 3, column datetime '2024-03-10 02:00:00': does not exist in America/New_York "
        "(skipped by a clock change)"
    ]
    assert result.inserted == 2


def test_naive_datetimes_without_tz_are_refused_whole(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path, "datetime,open,high,low,close,volume\n2024-03-04 09:30:00,10,12,9,11,5\n"
    )
    code = cli(
        [
            "--store",
            store_uri,
            "import-csv",
            str(path),
            "-s",
            "AAPL",
            "-t",
            "1m",
            "--on-error",
            "skip",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "line 2, column datetime '2024-03-04 09:30:00': a time without a timezone" in err
    assert "--tz" in err


def test_line_numbers_stay_right_across_blocks_blank_lines_and_short_rows(
    duck: Store, tmp_path: Path
) -> None:
    rows = [f"2024-01-{d:02d},10,12,9,11,5" for d in range(1, 29)]
    rows[5] = ""  # a blank line: ignored
    rows[9] = "2024-01-10,10,12"  # too few fields
    rows[20] = "2024-01-21,10,12,9,xx,5"  # a bad value in a later block: re-read as text
    rows.append("2024-01-03,10,12,9,11.5,5")  # repeats line 4 from an earlier block
    text = "date,open,high,low,close,volume\n" + "\n".join(rows) + "\n"
    result = import_csv(
        duck,
        write(tmp_path, text),
        "AAPL",
        timeframe="1d",
        on_error="skip",
        block_bytes=120,
        policy=EVERY_DAY,
    )
    assert [str(b) for b in result.skipped] == [
        "line 11: has 3 fields, expected 6",
        "line 22, column close 'xx': is not a number",
        "line 30, column date '2024-01-03T00:00:00Z': repeats the time of line 4 with other values",
    ]
    assert (result.rows, result.inserted) == (28, 25)


def test_an_unsorted_file_keeps_every_row(duck: Store, tmp_path: Path) -> None:
    days = [9, 3, 7, 1, 5, 2, 8, 4, 6]
    text = "date,open,high,low,close,volume\n" + "".join(
        f"2024-01-{d:02d},10,12,9,{10 + d / 10},5\n" for d in days
    )
    result = import_csv(
        duck, write(tmp_path, text), "AAPL", timeframe="1d", block_bytes=64, policy=EVERY_DAY
    )
    assert result.inserted == 9
    assert [c for _, c in closes(duck)] == [10 + d / 10 for d in sorted(days)]


# -- malformed files --------------------------------------------------------------------

MALFORMED = [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"Date,Open,High,Low,Close,Volume\n", "has a header but no data rows"),
    (
        b"Date;Open;High;Low;Close;Volume\n2024-03-04;1;2;0.5;1.5;10\n",
        "separates columns with ';', not ','; pass --delimiter ';'",
    ),
    (b"Date\tOpen\tHigh\tLow\tClose\tVolume\n", "separates columns with tabs"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00", "is binary data"),
    (b"\xff\xfe\xfa,b\n", "is not UTF-8 text"),
    (b"Date,Open,High,Low,Volume\n2024-03-04,1,2,0.5,10\n", "has no close column"),
    (b"When,Open,High,Low,Close\n2024-03-04,1,2,0.5,1\n", "has no time column"),
    (b"hello world\n", "has a single column"),
    (b"foo,bar\n1,2\n", "is neither a header"),
]


@pytest.mark.parametrize(("content", "message"), MALFORMED)
def test_a_malformed_file_gets_one_clear_line_and_exit_2(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = write(tmp_path, content)
    code = cli(["--store", store_uri, "import-csv", str(path), "-s", "AAPL"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["missing.csv", "."])
def test_a_missing_file_or_a_directory_is_refused(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code = cli(["--store", store_uri, "import-csv", str(tmp_path / name), "-s", "AAPL"])
    err = capsys.readouterr().err
    assert code == 2
    assert ("does not exist" if name != "." else "is a directory") in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tz", "Mars/Base"], "--tz 'Mars/Base' is not an IANA timezone"),
        (["--timeframe", "7x"], "unknown timeframe '7x'"),
        (["--on-error", "maybe"], "Invalid value for '--on-error'"),
        (["--symbol", "BAD SYMBOL!"], "symbol 'BAD SYMBOL!'"),
    ],
)
def test_bad_options_are_usage_errors(
    store_uri: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    path = write(tmp_path, GOOD)
    base = ["--store", store_uri, "import-csv", str(path)]
    code = cli([*base, *(args if "--symbol" in args else ["-s", "AAPL", *args])])
    assert code == 2
    assert message in capsys.readouterr().err


def test_the_cli_prints_a_summary_and_json(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    path = write(tmp_path, GOOD)
    assert cli(["--store", store_uri, "import-csv", str(path), "-s", "AAPL"]) == 0
    out = capsys.readouterr().out
    assert "inserted" in out
    assert "succeeded" in out
    assert cli(["--store", store_uri, "import-csv", str(path), "-s", "AAPL", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["inserted"], data["duplicates"], data["status"], data["timeframe"]) == (
        0,
        3,
        "succeeded",
        "1d",
    )


def test_the_cli_lists_skipped_lines(
    store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD + "2024-03-07,1,2,3,4,5\n")
    assert (
        cli(["--store", store_uri, "import-csv", str(path), "-s", "AAPL", "--on-error", "skip"])
        == 0
    )
    out = capsys.readouterr().out
    assert "skipped 1 lines:" in out
    assert "line 5, column High '2': high 2 is below low 3" in out


# -- the quality policy ----------------------------------------------------------------

SATURDAY = GOOD + (
    "2024-03-07,13,15,12,14,1300\n2024-03-08,14,16,13,15,1400\n2024-03-09,15,16,14,15.5,1500\n"
)  # no NYSE session on a Saturday
FLAG_CLOSED_DAYS = QualityPolicy().with_actions(closed_day="flag")
EVERY_RULE_OFF = QualityPolicy().with_actions(**dict.fromkeys(RULES, "off"))


def test_a_bar_a_reject_rule_catches_is_not_stored(duck: Store, tmp_path: Path) -> None:
    result = import_csv(duck, write(tmp_path, SATURDAY), "AAPL")  # closed_day rejects
    assert (result.rows, result.inserted, result.rejected, result.flagged) == (6, 5, 1, 0)
    assert [ts for ts, _ in closes(duck)] == [utc(2024, 3, d) for d in (4, 5, 6, 7, 8)]
    assert result.status == "succeeded"  # the policy did its job; no line was bad


def test_a_flagged_bar_is_stored_and_its_finding_names_the_line(
    duck: Store, tmp_path: Path
) -> None:
    result = import_csv(duck, write(tmp_path, SATURDAY), "AAPL", policy=FLAG_CLOSED_DAYS)
    assert (result.inserted, result.rejected, result.flagged) == (6, 0, 1)
    assert utc(2024, 3, 9) in [ts for ts, _ in closes(duck)]
    assert result.score == 1.0  # every session bar is there and clean; the Saturday is extra
    report, findings = load_report(duck, str(result.quality_report))
    assert report["job_id"] == result.job_id
    assert report["scope"]["kind"] == "import"
    assert report["summary"]["counts"] == {"closed_day": 1}
    assert [(f["rule"], f["ts"], f["values"]["line"]) for f in findings] == [
        ("closed_day", utc(2024, 3, 9), 7)
    ]


def test_with_every_rule_off_every_bar_is_stored_and_nothing_found(
    duck: Store, tmp_path: Path
) -> None:
    result = import_csv(duck, write(tmp_path, SATURDAY), "AAPL", policy=EVERY_RULE_OFF)
    assert (result.inserted, result.rejected, result.flagged) == (6, 0, 0)
    report, findings = load_report(duck, str(result.quality_report))
    assert report["summary"]["counts"] == {}
    assert findings == []


def test_the_policy_applies_to_every_block_of_a_big_file(duck: Store, tmp_path: Path) -> None:
    """Blocks after the first are checked too (the Saturday is in the last block)."""
    result = import_csv(
        duck,
        write(tmp_path, SATURDAY),
        "AAPL",
        timeframe="1d",
        block_bytes=40,
        one_transaction_bytes=0,
    )
    assert (result.inserted, result.rejected) == (5, 1)


def test_gaps_are_checked_over_the_imported_range(duck: Store, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("2024-03-05,11,13,10,12,1100\n", ""))
    result = import_csv(duck, path, "AAPL")
    report, findings = load_report(duck, str(result.quality_report))
    assert report["summary"]["counts"] == {"gap": 1}
    assert [(f["ts"], f["end_ts"]) for f in findings] == [(utc(2024, 3, 5), utc(2024, 3, 6))]
    assert result.score == pytest.approx(2 / 3, abs=1e-6)


def test_the_cli_applies_the_configured_policy_and_names_the_report(
    store_uri: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MARKETLAKE_QUALITY_RULES", '{"closed_day": "flag"}')
    assert (
        cli(
            [
                "--store",
                store_uri,
                "import-csv",
                str(write(tmp_path, SATURDAY)),
                "-s",
                "AAPL",
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert (summary["inserted"], summary["rejected"], summary["flagged"]) == (6, 0, 1)
    report = summary["quality_report"]
    assert (
        cli(["--store", store_uri, "import-csv", str(write(tmp_path, SATURDAY)), "-s", "AAPL"]) == 0
    )
    out = capsys.readouterr().out
    assert "rejected (quality)" in out
    assert "quality: 0 bars rejected (not stored), 1 flagged; see `marketlake validate" in out
    assert report not in out  # a second import, a second report


# -- the csv provider -------------------------------------------------------------------


def test_the_csv_provider_serves_files_from_the_csv_dir(duck: Store, tmp_path: Path) -> None:
    import asyncio

    from marketlake.config import Settings
    from marketlake.ingest.jobs import run_ingest
    from marketlake.providers import get_provider

    write(tmp_path, GOOD, "AAPL.csv")
    write(tmp_path, GOOD + "2024-03-07,1,2,3,4,5\n", "MSFT.csv")
    provider = get_provider("csv", Settings(csv_dir=tmp_path))
    result = asyncio.run(
        run_ingest(duck, provider, ["AAPL", "MSFT", "NONE"], "1d", utc(2024, 3, 5), utc(2024, 3, 8))
    )
    by_symbol = {s.symbol: s for s in result.symbols}
    assert by_symbol["AAPL"].inserted == 2
    assert by_symbol["MSFT"].inserted == 0
    assert "line 5, column High" in (by_symbol["MSFT"].error or "")
    assert "no file NONE.csv in the CSV directory" in (by_symbol["NONE"].error or "")
    assert closes(duck) == [(utc(2024, 3, 5), 12.0), (utc(2024, 3, 6), 13.0)]


def test_a_big_file_is_checked_whole_before_anything_is_written(
    duck: Store, tmp_path: Path
) -> None:
    """Above the one-transaction size, a bad last line still leaves the store untouched."""
    rows = [f"2024-01-{d:02d},10,12,9,11,5" for d in range(1, 29)]
    good = write(tmp_path, "date,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    bad = write(tmp_path, good.read_text() + "2024-01-29,10,12,9,x,5\n", "bad.csv")
    calls: list[tuple[int, int, int]] = []
    with pytest.raises(DataError, match="line 30, column close 'x'"):
        import_csv(duck, bad, "AAPL", block_bytes=100, one_transaction_bytes=10)
    assert duck.count_bars() == 0
    assert duck.list_instruments() == []
    result = import_csv(
        duck,
        good,
        "AAPL",
        block_bytes=100,
        one_transaction_bytes=10,
        progress=lambda *a: calls.append(a),
        policy=EVERY_DAY,
    )
    assert result.inserted == 28
    size = good.stat().st_size
    assert calls[-1] == (2 * size, 2 * size, 28)
    assert calls[0][0] < size


def test_skip_mode_registers_nothing_for_a_file_of_only_bad_rows(
    duck: Store, tmp_path: Path
) -> None:
    path = write(
        tmp_path, "date,open,high,low,close,volume\n2024-01-01,1,2,3,4,5\n2024-01-02,1,2,3,4,5\n"
    )
    result = import_csv(duck, path, "AAPL", timeframe="1d", on_error="skip")
    assert (result.inserted, len(result.skipped)) == (0, 2)
    assert duck.list_instruments() == []


def test_a_last_line_without_newline_and_lines_longer_than_a_block_are_read(
    duck: Store, tmp_path: Path
) -> None:
    path = write(tmp_path, GOOD.rstrip("\n"))
    assert import_csv(duck, path, "AAPL", timeframe="1d", block_bytes=16).inserted == 3


def test_a_byte_order_mark_before_data_without_header_is_ignored(
    duck: Store, tmp_path: Path
) -> None:
    path = write(
        tmp_path, "\ufeff2024-03-04,10,12,9,11,1000\n2024-03-05,11,13,10,12,1100\n".encode()
    )
    assert import_csv(duck, path, "AAPL").inserted == 2
    path = write(tmp_path, ("\ufeff" + GOOD).encode(), "with-header.csv")
    assert import_csv(duck, path, "MSFT").inserted == 3
