"""``marketlake validate``, ``repair``, ``aggregate``, ``instruments show`` and ``demo``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pytest

from marketlake.cli.app import cli
from marketlake.store import open_store
from tests.conftest import bars_for


@pytest.fixture
def store_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A store file holding AAPL minutes with one broken bar and a missing half hour."""
    monkeypatch.setenv("MARKETLAKE_CONFIG_DIR", str(tmp_path / "config"))
    uri = f"duckdb:///{tmp_path}/m.duckdb"
    minutes = bars_for("AAPL", "1m", "2024-03-04", "2024-03-06")
    rows = [
        r
        for r in minutes.to_pylist()
        if not 15 <= r["ts"].hour < 16 or r["ts"].minute >= 30 or r["ts"].day != 4
    ]
    rows[10]["high"] = rows[10]["low"] - 1.0
    with open_store(uri) as store:
        store.ensure_instruments(["AAPL"])
        store.write_bars(pa.Table.from_pylist(rows, schema=minutes.schema))
    return uri


def run(uri: str, *args: str) -> int:
    return cli(["--store", uri, *args])


def test_validate_prints_the_score_and_the_findings(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(store_uri, "validate", "AAPL", "-t", "1m") == 0
    out = capsys.readouterr().out
    assert "96.03%" in out  # 749 clean of 780 expected
    assert "ohlc (error)" in out
    assert "gap (warning)" in out
    assert "2024-03-04 15:00 → 15:30" in out


def test_validate_json_and_csv_and_the_stored_report(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(store_uri, "validate", "--format", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["counts"] == {"gap": 1, "ohlc": 1}
    (series,) = data["summary"]["series"]
    assert (series["expected"], series["present"], series["clean"]) == (780, 750, 749)
    assert [f["rule"] for f in data["findings"]] == ["ohlc", "gap"]
    report_id = data["report_id"]
    assert run(store_uri, "validate", "--show", report_id, "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["rule"], r["ts"], r["end_ts"]) for r in rows] == [
        ("ohlc", "2024-03-04T14:40:00Z", ""),
        ("gap", "2024-03-04T15:00:00Z", "2024-03-04T15:30:00Z"),
    ]
    assert run(store_uri, "validate", "--list", "--json") == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["findings"], listed["errors"]) == (report_id, 2, 1)
    assert run(store_uri, "validate", "--list", "--format", "csv") == 0
    assert capsys.readouterr().out.startswith("id,created,kind")
    assert run(store_uri, "validate", "--show", report_id) == 0
    assert "Quality report" in capsys.readouterr().out


def test_validate_can_fail_a_pipeline(store_uri: str) -> None:
    assert run(store_uri, "validate", "--fail-on", "error") == 1
    assert run(store_uri, "validate", "--since", "2024-03-05", "--fail-on", "error") == 0
    assert run(store_uri, "validate", "--since", "2024-03-05", "--fail-on", "warning") == 0


def test_validate_rejects_a_backwards_range(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(store_uri, "validate", "--since", "2024-03-05", "--until", "2024-03-04") == 2
    assert "--since 2024-03-05T00:00:00+00:00 must be before --until" in capsys.readouterr().err


def test_validate_since_a_period(store_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(store_uri, "validate", "--since", "30d") == 0  # nothing stored that recently
    assert "no stored bars in that range" in capsys.readouterr().out


def test_repair_fills_the_gap_from_the_source_provider(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(store_uri, "repair", "AAPL", "-t", "1m") == 0
    out = capsys.readouterr().out
    assert "filled 30 of 30 missing bars; 0 still missing" in out
    assert run(store_uri, "repair", "AAPL", "-t", "1m", "--json") == 0
    assert json.loads(capsys.readouterr().out)["missing_before"] == 0


def test_aggregate_builds_rollups_and_instruments_show_has_the_score(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(store_uri, "aggregate", "--from", "1m", "--to", "1h,1d", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["timeframe"], r["bars"], r["inserted"]) for r in rows] == [
        ("1h", 14, 14),
        ("1d", 2, 2),
    ]
    assert run(store_uri, "aggregate", "AAPL", "--to", "1h", "--start", "2024-03-05") == 0
    assert "Roll-ups from 1m" in capsys.readouterr().out
    assert run(store_uri, "validate", "AAPL") == 0
    capsys.readouterr()
    assert run(store_uri, "instruments", "show", "AAPL") == 0
    out = capsys.readouterr().out
    assert "Quality (latest report per timeframe)" in out
    assert "96.03%" in out
    assert run(store_uri, "instruments", "show", "AAPL", "--json") == 0
    quality = json.loads(capsys.readouterr().out)["quality"]
    assert [(q["timeframe"], q["score"]) for q in quality] == [
        ("1d", 1.0),
        ("1h", 1.0),
        ("1m", round(749 / 780, 6)),
    ]


def test_aggregate_to_a_finer_timeframe_is_bad_usage(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(store_uri, "aggregate", "--from", "1h", "--to", "1m") == 2
    assert "cannot roll 1h bars up to 1m" in capsys.readouterr().err


def test_instruments_show_without_a_report_says_how_to_get_one(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(store_uri, "instruments", "show", "AAPL") == 0
    assert "no quality report yet: `marketlake validate AAPL`" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_validates_and_rolls_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli(["--store", f"duckdb:///{tmp_path}/d.duckdb", "demo", "--days", "3", "--no-serve"]) == 0
    )
    out = capsys.readouterr().out
    assert "Data quality" in out
    assert "100.00%" in out
    assert "rolled up to 5m, 15m, 1h, 4h, 1d, 1w, 1mo" in out.replace("\n", " ")
