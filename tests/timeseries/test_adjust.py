"""Split- and dividend-adjusted reads, checked against a hand-worked example.

Four daily bars of a made-up stock XYZ, as traded:

    date        open  high  low   close  volume
    2024-01-02  99    101   98    100    1000
    2024-01-03  101   103   100   102    1000
    2024-01-04  51    52    49    50     2000     ex-dividend 2.04 (paid on 1 share)
    2024-01-05  25    27    24.5  26     4000     2-for-1 split, ex-date 2024-01-05

Adjusting back from the newest bar:
* 01-05 is after both actions: unchanged.
* 01-04 is before the split only: prices / 2 → close 25; volume x 2 → 4000.
* 01-03 is before the split and the dividend. The dividend factor is
  1 - 2.04 / 102 = 0.98, where 102 is the raw close on the day before the
  ex-date; with the split, prices x 0.98 / 2 = x 0.49 → close 49.98, open 49.49.
* 01-02 likewise x 0.49 → close 49.0, high 49.49, low 48.02; volume 2000.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from marketlake.cli.app import cli
from marketlake.schema import BAR_SCHEMA, Instrument
from marketlake.store.base import Store
from marketlake.timeseries.adjust import ACTION_SCHEMA, read_adjusted


def day(d: int) -> datetime:
    return datetime(2024, 1, d, tzinfo=UTC)


RAW = [
    (day(2), 99, 101, 98, 100, 1000),
    (day(3), 101, 103, 100, 102, 1000),
    (day(4), 51, 52, 49, 50, 2000),
    (day(5), 25, 27, 24.5, 26, 4000),
]


def bars(
    rows: list[tuple[datetime, float, float, float, float, float]], timeframe: str = "1d"
) -> pa.Table:
    ts, o, h, lo, c, v = zip(*rows, strict=True)
    n = len(rows)
    return pa.table(
        {
            "symbol": ["XYZ"] * n,
            "timeframe": [timeframe] * n,
            "ts": list(ts),
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": v,
            "trades": [None] * n,
            "vwap": c,
            "source": ["test"] * n,
        }
    ).cast(BAR_SCHEMA)


def actions(*rows: tuple[datetime, str, float]) -> pa.Table:
    return pa.table(
        {
            "symbol": ["XYZ"] * len(rows),
            "ts": [r[0] for r in rows],
            "kind": [r[1] for r in rows],
            "value": [r[2] for r in rows],
            "source": ["test"] * len(rows),
        },
        schema=ACTION_SCHEMA,
    )


@pytest.fixture
def xyz(duck: Store) -> Store:
    duck.add_instrument(Instrument(symbol="XYZ"))
    duck.write_bars(bars(RAW))
    duck.write_actions(actions((day(4), "dividend", 2.04), (day(5), "split", 2.0)))
    return duck


def test_adjusted_prices_match_the_hand_worked_example(xyz: Store) -> None:
    table = read_adjusted(xyz, "XYZ", "1d")
    assert table.column("close").to_pylist() == pytest.approx([49.0, 49.98, 25.0, 26.0], rel=1e-12)
    assert table.column("open").to_pylist() == pytest.approx([48.51, 49.49, 25.5, 25.0], rel=1e-12)
    assert table.column("high").to_pylist() == pytest.approx([49.49, 50.47, 26.0, 27.0], rel=1e-12)
    assert table.column("low").to_pylist() == pytest.approx([48.02, 49.0, 24.5, 24.5], rel=1e-12)
    assert table.column("vwap").to_pylist() == pytest.approx([49.0, 49.98, 25.0, 26.0], rel=1e-12)


def test_split_adjustment_scales_volume_and_dividends_do_not(xyz: Store) -> None:
    table = read_adjusted(xyz, "XYZ", "1d")
    assert table.column("volume").to_pylist() == [2000.0, 2000.0, 4000.0, 4000.0]


def test_a_range_after_all_actions_is_unchanged(xyz: Store) -> None:
    assert read_adjusted(xyz, "XYZ", "1d", day(5)).equals(xyz.read_bars("XYZ", "1d", day(5)).table)


def test_a_range_before_the_actions_still_feels_them(xyz: Store) -> None:
    table = read_adjusted(xyz, "XYZ", "1d", day(2), day(3))
    assert table.column("close").to_pylist() == pytest.approx([49.0], rel=1e-12)


def test_intraday_bars_switch_at_local_midnight_of_the_ex_date(duck: Store) -> None:
    duck.add_instrument(Instrument(symbol="XYZ", timezone="America/New_York"))
    before = datetime(2024, 1, 5, 4, 59, tzinfo=UTC)  # 23:59 New York on 01-04
    after = datetime(2024, 1, 5, 5, 0, tzinfo=UTC)  # 00:00 New York on 01-05
    duck.write_bars(bars([(before, 50, 50, 50, 50, 10), (after, 25, 25, 25, 25, 20)], "1m"))
    duck.write_actions(actions((day(5), "split", 2.0)))
    table = read_adjusted(duck, "XYZ", "1m")
    assert table.column("close").to_pylist() == [25.0, 25.0]
    assert table.column("volume").to_pylist() == [20.0, 20.0]


def test_writing_actions_twice_stores_them_once(xyz: Store) -> None:
    again = xyz.write_actions(actions((day(4), "dividend", 2.04), (day(5), "split", 2.0)))
    assert again == 0
    assert xyz.read_actions("XYZ").num_rows == 2


def test_a_corrected_action_replaces_the_stored_one_only_when_asked(xyz: Store) -> None:
    assert xyz.write_actions(actions((day(4), "dividend", 2.0))) == 0
    assert xyz.write_actions(actions((day(4), "dividend", 2.0)), replace=True) == 1
    assert xyz.read_actions("XYZ").column("value").to_pylist() == [2.0, 2.0]


def test_bars_adjusted_on_the_command_line(
    xyz: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("marketlake.cli.app.State.store", property(lambda self: xyz))
    assert cli(["bars", "XYZ", "-t", "1d", "--adjusted", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [float(x) for x in lines[1].split(",")[3:7]] == pytest.approx(
        [48.51, 49.49, 48.02, 49.0], rel=1e-12
    )


def test_actions_listed_on_the_command_line(
    xyz: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("marketlake.cli.app.State.store", property(lambda self: xyz))
    assert cli(["actions", "XYZ", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"ex_date": "2024-01-04"' in out
    assert '"kind": "split"' in out
