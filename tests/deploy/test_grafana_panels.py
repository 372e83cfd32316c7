"""Every SQL panel and variable of the Grafana dashboards runs on a real PostgreSQL store.

The store is filled with synthetic demo data (three symbols, five days of 1-minute
bars, a daily series, jobs, quality reports, analytics and alerts): through the
PostgreSQL store (migrated schema, ``write_bars``, ``insert_row``) when it is
installed, otherwise into the catalogue's tables compiled by SQLAlchemy. Each panel's
SQL is expanded the way Grafana expands it (tests/deploy/grafana_sql.py) for a fixed
range, run, and checked for the columns the panel shows; the market panels are
also checked against values computed here from the same bars.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import math
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from tests.conftest import bars_for, service_unavailable
from tests.deploy.grafana_sql import PanelContext

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
PG_URL = os.environ.get("MARKETLAKE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
START = datetime(2024, 3, 4, tzinfo=UTC)
END = datetime(2024, 3, 9, tzinfo=UTC)
CONTEXT = PanelContext(
    START,
    END,
    interval="1h",
    variables={
        "symbol": "AAPL",
        "timeframe": "1m",
        "symbols": ["AAPL", "BTCUSDT"],
    },
)
BAR_COLUMNS = [
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
]

# What each panel shows: the columns its query must return, in order.
EXPECTED_COLUMNS: dict[tuple[str, str], list[str]] = {
    ("marketlake-market", "Price ($symbol, $timeframe)"): [
        "time",
        "open",
        "high",
        "low",
        "close",
        "volume",
    ],
    ("marketlake-market", "Last price"): ["last price"],
    ("marketlake-market", "Change"): ["change"],
    ("marketlake-market", "Volatility (annualised)"): ["volatility"],
    ("marketlake-market", "Max drawdown"): ["max drawdown"],
    ("marketlake-market", "Volume"): ["volume"],
    ("marketlake-market", "Comparison, rebased to 100 ($timeframe)"): ["time", "metric", "value"],
    ("marketlake-quality", "Quality score"): ["time", "quality score"],
    ("marketlake-quality", "Findings by rule"): ["time", "metric", "value"],
    ("marketlake-quality", "Findings by severity"): ["severity", "findings"],
    ("marketlake-quality", "Bars in range"): ["symbol", "timeframe", "bars", "first", "last"],
    ("marketlake-quality", "Latest findings"): [
        "found",
        "severity",
        "rule",
        "symbol",
        "timeframe",
        "bar time",
        "message",
    ],
    ("marketlake-ingest", "Jobs by status"): ["time", "metric", "value"],
    ("marketlake-ingest", "Rows written"): ["time", "inserted", "duplicates", "conflicts"],
    ("marketlake-ingest", "Failures"): ["failed", "partial", "jobs"],
    ("marketlake-ingest", "Duration"): ["time", "metric", "value"],
    ("marketlake-ingest", "Recent jobs"): [
        "id",
        "kind",
        "status",
        "created",
        "seconds",
        "rows",
        "error",
    ],
    ("marketlake-alerts", "Alerts by kind"): ["time", "metric", "value"],
    ("marketlake-alerts", "Alerts by symbol"): ["symbol", "alerts"],
    ("marketlake-alerts", "Recent alerts"): ["time", "symbol", "kind", "value", "message", "rule"],
    ("marketlake-alerts", "Latest analytics"): ["symbol", "metric", "value", "updated"],
}


def sql_targets() -> list[tuple[str, str, dict[str, Any]]]:
    """(dashboard uid, panel title, target) of every PostgreSQL query in the dashboards."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        found.extend(
            (board["uid"], panel["title"], target)
            for panel in board["panels"]
            for target in panel.get("targets", [])
            if "rawSql" in target
        )
    return found


def sql_variables() -> dict[tuple[str, str], str]:
    """(dashboard uid, variable name) → query of every SQL template variable."""
    found = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                found[(board["uid"], variable["name"])] = variable["query"]
    return found


# ---- the demo store -------------------------------------------------------------------------


def _fill_real_store(schema: str, bars: pa.Table) -> None:
    """The PostgreSQL store itself: migrated schema, bars through write_bars, rows by insert_row."""
    from marketlake.store import open_store

    migrate = importlib.import_module("marketlake.store.pgmigrate").migrate
    uri = f"{PG_URL}?schema={schema}"
    migrate(uri, timescale="off")
    store = open_store(uri)
    try:
        assert store.write_bars(bars).inserted == bars.num_rows
        for table, rows in DEMO_ROWS:
            for row in rows:
                store.insert_row(table, row)
    finally:
        store.close()


def _fill_compiled_tables(conn: Any, schema: str, bars: pa.Table) -> None:
    """Without the PostgreSQL store: the catalogue's tables compiled by SQLAlchemy, COPY."""
    _create_tables(schema)
    _copy_bars(conn, bars)
    for table, rows in DEMO_ROWS:
        _insert(conn, table, rows)
    conn.commit()


def _create_tables(schema: str) -> None:
    """The catalogue's tables compiled by SQLAlchemy into ``schema``."""
    from sqlalchemy import create_engine, text

    from marketlake.store.tables import metadata

    engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            metadata.create_all(conn.execution_options(schema_translate_map={None: schema}))
            conn.execute(text(f'CREATE UNIQUE INDEX ON "{schema}".bars (symbol, timeframe, ts)'))
    finally:
        engine.dispose()


def _copy_bars(conn: Any, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pacsv.write_csv(table.select(BAR_COLUMNS), buffer, pacsv.WriteOptions(include_header=False))
    with conn.cursor().copy(
        f"COPY bars ({', '.join(BAR_COLUMNS)}) FROM STDIN WITH (FORMAT csv)"
    ) as copy:
        copy.write(buffer.getvalue())


def _insert(conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        columns = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join(["%s"] * len(row))
        conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))


def _at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


def _summary(*symbols: tuple[str, int, int, int]) -> str:
    return json.dumps(
        {
            "symbols": [
                {
                    "symbol": s,
                    "fetched": i + d,
                    "inserted": i,
                    "duplicates": d,
                    "conflicts": c,
                    "error": None,
                    "seconds": 1.5,
                }
                for s, i, d, c in symbols
            ]
        }
    )


JOBS = [
    {
        "id": "job-1",
        "kind": "ingest",
        "status": "succeeded",
        "params": "{}",
        "summary": _summary(("AAPL", 1950, 0, 0), ("MSFT", 1950, 10, 0)),
        "created_at": _at(1),
        "started_at": _at(1),
        "finished_at": _at(1) + timedelta(seconds=12),
    },
    {
        "id": "job-2",
        "kind": "ingest",
        "status": "partial",
        "params": "{}",
        "summary": _summary(("BTCUSDT", 7200, 0, 2)),
        "error": "AAPL: rate limited",
        "created_at": _at(26),
        "started_at": _at(26),
        "finished_at": _at(26) + timedelta(seconds=3),
    },
    {
        "id": "job-3",
        "kind": "ingest",
        "status": "failed",
        "params": "{}",
        "summary": "{}",
        "error": "provider down",
        "created_at": _at(50),
        "started_at": _at(50),
        "finished_at": _at(50) + timedelta(seconds=1),
    },
    {
        "id": "job-old",
        "kind": "ingest",
        "status": "failed",
        "params": "{}",
        "summary": "{}",
        "created_at": START - timedelta(days=3),
    },
]
REPORTS = [
    {"id": "rep-1", "scope": "{}", "summary": json.dumps({"score": 97.5}), "created_at": _at(2)},
    {"id": "rep-2", "scope": "{}", "summary": json.dumps({"score": 88.0}), "created_at": _at(30)},
]
FINDINGS = [
    {
        "report_id": "rep-1",
        "rule": "gap",
        "severity": "warning",
        "symbol": "AAPL",
        "timeframe": "1m",
        "ts": _at(15),
        "message": "missing 3 bars",
    },
    {
        "report_id": "rep-2",
        "rule": "spike",
        "severity": "error",
        "symbol": "AAPL",
        "timeframe": "1m",
        "ts": _at(40),
        "message": "close jumps 9 sigma",
    },
    {
        "report_id": "rep-2",
        "rule": "gap",
        "severity": "warning",
        "symbol": "BTCUSDT",
        "timeframe": "1m",
        "ts": _at(41),
        "message": "missing 1 bar",
    },
    {
        "report_id": "rep-2",
        "rule": "gap",
        "severity": "warning",
        "symbol": "MSFT",
        "timeframe": "1m",
        "ts": _at(42),
        "message": "missing 2 bars",
    },
]
ALERTS = [
    {
        "id": "al-1",
        "rule_id": "btc-above",
        "symbol": "BTCUSDT",
        "ts": _at(5),
        "kind": "price_above",
        "value": 70000.0,
        "message": "BTCUSDT above 70000",
        "seq": 1,
    },
    {
        "id": "al-2",
        "rule_id": "aapl-drawdown",
        "symbol": "AAPL",
        "ts": _at(20),
        "kind": "drawdown_below",
        "value": -0.05,
        "message": "AAPL drawdown -5 %",
        "seq": 2,
    },
    {
        "id": "al-3",
        "rule_id": "btc-above",
        "symbol": "BTCUSDT",
        "ts": _at(70),
        "kind": "price_above",
        "value": 71000.0,
        "message": "BTCUSDT above 70000",
        "seq": 3,
    },
]
METRICS = [
    {"symbol": "AAPL", "name": "volatility", "ts": _at(100), "value": 0.21},
    {"symbol": "AAPL", "name": "vwap", "ts": _at(100), "value": 180.5},
    {"symbol": "BTCUSDT", "name": "volatility", "ts": _at(119), "value": 0.55},
]
INSTRUMENTS = [
    {
        "symbol": s,
        "name": s,
        "asset_class": a,
        "exchange": "",
        "currency": "USD",
        "timezone": "UTC",
        "active": active,
        "auto_registered": False,
    }
    for s, a, active in [
        ("AAPL", "stock", True),
        ("MSFT", "stock", True),
        ("BTCUSDT", "crypto", True),
        ("OLD", "stock", False),
    ]
]
DEMO_ROWS = [
    ("instruments", INSTRUMENTS),
    ("jobs", JOBS),
    ("quality_reports", REPORTS),
    ("quality_findings", FINDINGS),
    ("alerts", ALERTS),
    ("metrics", METRICS),
]


@pytest.fixture(scope="module")
def demo_bars() -> pa.Table:
    minutes = bars_for(["AAPL", "MSFT", "BTCUSDT"], "1m", "2024-03-04", "2024-03-09")
    daily = bars_for("AAPL", "1d", "2024-02-01", "2024-03-09")
    return pa.concat_tables([minutes, daily])


@pytest.fixture(scope="module")
def pg(demo_bars: pa.Table) -> Iterator[Any]:
    """A connection whose search path is a private schema holding the demo store."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        service_unavailable("PostgreSQL", str(exc).strip())
    schema = f"ml_grafana_{uuid.uuid4().hex[:10]}"
    real_store = importlib.util.find_spec("marketlake.store.pgmigrate") is not None
    try:
        if real_store:
            _fill_real_store(schema, demo_bars)
        with psycopg.connect(PG_URL, options=f"-c search_path={schema}") as conn:
            if not real_store:
                _fill_compiled_tables(conn, schema, demo_bars)
            conn.execute("SET default_transaction_read_only = on")  # like grafana_reader
            yield conn
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def run(pg: Any, sql: str, context: PanelContext = CONTEXT) -> tuple[list[str], list[tuple]]:
    """Columns and rows of a panel query as Grafana would send it."""
    with pg.cursor() as cur:
        cur.execute(context.expand(sql))
        columns = [d.name for d in cur.description]
        rows = cur.fetchall()
    pg.rollback()
    return columns, rows


def panel_sql(uid: str, title: str) -> str:
    [target] = [t for u, p, t in sql_targets() if (u, p) == (uid, title)]
    return str(target["rawSql"])


# ---- every panel ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "title", "target"), sql_targets(), ids=[f"{u}:{p}" for u, p, _ in sql_targets()]
)
def test_panel_query_runs_and_returns_the_columns_the_panel_shows(
    pg: Any, uid: str, title: str, target: dict[str, Any]
) -> None:
    assert (uid, title) in EXPECTED_COLUMNS, f"add the expected columns of panel {title!r}"
    columns, rows = run(pg, target["rawSql"])
    assert columns == EXPECTED_COLUMNS[(uid, title)]
    assert rows, f"panel {title!r} shows nothing on the demo data"
    if target["format"] == "time_series":
        assert columns[0] == "time"
        values = [i for i, c in enumerate(columns) if c not in ("time", "metric")]
        assert all(
            isinstance(row[i], int | float | type(None)) or hasattr(row[i], "is_finite")
            for row in rows
            for i in values
        ), "time series values must be numbers"


def test_every_expected_panel_exists() -> None:
    """The expectations above name only panels that are in the dashboards."""
    assert set(EXPECTED_COLUMNS) == {(u, p) for u, p, _ in sql_targets()}


def test_symbol_variable_lists_active_instruments(pg: Any) -> None:
    _, rows = run(pg, sql_variables()[("marketlake-market", "symbol")])
    assert [r[0] for r in rows] == ["AAPL", "BTCUSDT", "MSFT"]


def test_timeframe_variable_lists_the_stored_timeframes_of_the_symbol(pg: Any) -> None:
    _, rows = run(pg, sql_variables()[("marketlake-market", "timeframe")])
    assert [r[0] for r in rows] == ["1d", "1m"]
    btc = PanelContext(START, END, variables={"symbol": "BTCUSDT"})
    _, rows = run(pg, sql_variables()[("marketlake-market", "timeframe")], btc)
    assert [r[0] for r in rows] == ["1m"]


def test_every_variable_query_runs(pg: Any) -> None:
    for (uid, name), query in sql_variables().items():
        _, rows = run(pg, query)
        assert rows, f"variable {name} of {uid} lists nothing"


# ---- market values against a reference computed here ------------------------------------------


@pytest.fixture(scope="module")
def aapl(demo_bars: pa.Table) -> pa.Table:
    mask = pc.and_(pc.equal(demo_bars["symbol"], "AAPL"), pc.equal(demo_bars["timeframe"], "1m"))
    return demo_bars.filter(mask).sort_by("ts")


def test_price_panel_merges_bars_into_hourly_ohlc(pg: Any, aapl: pa.Table) -> None:
    _, rows = run(pg, panel_sql("marketlake-market", "Price ($symbol, $timeframe)"))
    hours = pc.divide(pc.cast(aapl["ts"], pa.int64()), 3_600_000_000).to_numpy()
    first = rows[0]
    in_first = aapl.filter(pa.array(hours == hours[0]))
    assert float(first[0]) == hours[0] * 3600
    assert first[1] == in_first["open"][0].as_py()
    assert first[2] == pc.max(in_first["high"]).as_py()
    assert first[3] == pc.min(in_first["low"]).as_py()
    assert first[4] == in_first["close"][-1].as_py()
    assert len(rows) == len(np.unique(hours))
    assert sum(r[5] for r in rows) == pytest.approx(pc.sum(aapl["volume"]).as_py(), rel=1e-12)


def _kpi(pg: Any, title: str) -> float:
    _, rows = run(pg, panel_sql("marketlake-market", title))
    return float(rows[0][0])


def test_kpi_panels_match_a_reference_computed_from_the_bars(pg: Any, aapl: pa.Table) -> None:
    close = aapl["close"].to_numpy()
    seconds = (aapl["ts"][-1].as_py() - aapl["ts"][0].as_py()).total_seconds()
    returns = np.log(close[1:] / close[:-1])
    assert _kpi(pg, "Last price") == close[-1]
    assert _kpi(pg, "Change") == pytest.approx(
        100 * (close[-1] / aapl["open"][0].as_py() - 1), rel=1e-12
    )
    assert _kpi(pg, "Volatility (annualised)") == pytest.approx(
        100 * math.sqrt(float(np.sum(returns**2)) * 31557600 / seconds), rel=1e-9
    )
    assert _kpi(pg, "Max drawdown") == pytest.approx(
        100 * float(np.min(close / np.maximum.accumulate(close) - 1)), rel=1e-12
    )
    assert _kpi(pg, "Volume") == pytest.approx(float(np.sum(aapl["volume"].to_numpy())), rel=1e-12)


def test_comparison_starts_every_symbol_at_100(pg: Any, demo_bars: pa.Table) -> None:
    _, rows = run(pg, panel_sql("marketlake-market", "Comparison, rebased to 100 ($timeframe)"))
    series: dict[str, list[float]] = {}
    for _, metric, value in rows:
        series.setdefault(metric, []).append(float(value))
    assert sorted(series) == ["AAPL", "BTCUSDT"]
    assert all(values[0] == 100.0 for values in series.values())
    btc = demo_bars.filter(pc.equal(demo_bars["symbol"], "BTCUSDT"))
    close = btc["close"].to_numpy()
    # one value per hour: the last close of each hour, divided by the first hour's last close
    assert len(series["BTCUSDT"]) == 120
    assert series["BTCUSDT"][-1] == pytest.approx(100 * close[-1] / close[59], rel=1e-12)


# ---- operational dashboards against the rows inserted above -----------------------------------


def test_quality_score_follows_the_reports(pg: Any) -> None:
    _, rows = run(pg, panel_sql("marketlake-quality", "Quality score"))
    assert [r[1] for r in rows] == [97.5, 88.0]


def test_findings_are_counted_per_rule_and_filtered_by_symbol(pg: Any) -> None:
    _, rows = run(pg, panel_sql("marketlake-quality", "Findings by rule"))
    assert [(float(t), m, v) for t, m, v in rows] == [
        (START.timestamp() + 2 * 3600, "gap", 1),
        (START.timestamp() + 30 * 3600, "gap", 1),  # MSFT's gap is not among $symbols
        (START.timestamp() + 30 * 3600, "spike", 1),
    ]


def test_ingest_panels_sum_the_job_summaries(pg: Any) -> None:
    _, rows = run(pg, panel_sql("marketlake-ingest", "Rows written"))
    assert [r[1:] for r in rows] == [(3900, 10, 0), (7200, 0, 2)]
    _, rows = run(pg, panel_sql("marketlake-ingest", "Failures"))
    assert rows == [(1, 1, 3)]  # job-old is outside the range
    _, rows = run(pg, panel_sql("marketlake-ingest", "Duration"))
    assert [float(r[2]) for r in rows] == [12.0, 3.0, 1.0]
    _, rows = run(pg, panel_sql("marketlake-ingest", "Recent jobs"))
    assert [(r[0], r[5]) for r in rows] == [("job-3", None), ("job-2", 7200), ("job-1", 3900)]


def test_alert_panels_count_alerts_per_symbol(pg: Any) -> None:
    _, rows = run(pg, panel_sql("marketlake-alerts", "Alerts by symbol"))
    assert rows == [("BTCUSDT", 2), ("AAPL", 1)]
    _, rows = run(pg, panel_sql("marketlake-alerts", "Latest analytics"))
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("AAPL", "volatility", 0.21),
        ("AAPL", "vwap", 180.5),
        ("BTCUSDT", "volatility", 0.55),
    ]
