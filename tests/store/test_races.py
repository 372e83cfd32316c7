"""Registrations and upserts are atomic: concurrent writers of one key never fail.

Real processes on the real PostgreSQL: two ``ingest`` runs of one new symbol, and two
API servers answering 40 concurrent POSTs and PUTs of one instrument and one alert rule.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from marketlake.api.keys import create_key
from marketlake.schema import Instrument
from marketlake.store import Store
from tests.api.server import running
from tests.conftest import PG
from tests.store.procs import ingest

pytestmark = pytest.mark.postgres


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_two_processes_ingesting_one_new_symbol_both_succeed(pg: Store, round_: int) -> None:
    symbol = f"RACE{round_}"
    procs = [
        ingest(PG.connect(), [symbol], "2024-03-04", "2024-03-06"),
        ingest(PG.connect(), [symbol], "2024-03-05", "2024-03-07"),
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    jobs = pg.list_jobs(kind="ingest")
    assert sorted(j.status for j in jobs) == ["succeeded", "succeeded"]
    assert [i.symbol for i in pg.list_instruments()] == [symbol]
    assert bool(pg.auto_registered([symbol]))
    fetched = [s["fetched"] for j in jobs for s in j.summary["symbols"]]
    inserted = sum(s["inserted"] for j in jobs for s in j.summary["symbols"])
    per_day = fetched[0] // 2  # each run covers two trading days, one of them shared
    assert per_day > 0
    assert fetched == [2 * per_day, 2 * per_day]
    assert pg.count_bars(symbol, "1m") == inserted == 3 * per_day


def test_ensure_instruments_reports_a_symbol_new_once(pg: Store) -> None:
    with ThreadPoolExecutor(8) as pool:
        news = list(pool.map(lambda _: pg.ensure_instruments(["ZZZ", "YYY"]), range(16)))
    assert sorted(s for new in news for s in new) == ["YYY", "ZZZ"]
    assert [i.symbol for i in pg.list_instruments()] == ["YYY", "ZZZ"]


def test_checkpoints_set_concurrently_keep_one_row_per_series(pg: Store) -> None:
    from datetime import UTC, datetime, timedelta

    base = datetime(2024, 3, 4, tzinfo=UTC)

    def put(i: int) -> None:
        pg.set_checkpoints("synthetic", "1m", {"AAA": base + timedelta(minutes=i), "BBB": base})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(24)))
    rows = pg.select_rows("checkpoints", order_by="symbol")
    assert [r["symbol"] for r in rows] == ["AAA", "BBB"]
    assert base <= rows[0]["last_ts"] <= base + timedelta(minutes=23)


def test_api_keys_with_one_name_race_to_exactly_one(pg: Store) -> None:
    from marketlake.errors import ConflictError

    def make(_: int) -> str:
        try:
            create_key(pg, "ci", "read")
        except ConflictError:
            return "conflict"
        return "created"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(make, range(16)))
    assert sorted(set(outcomes)) == ["conflict", "created"]
    assert outcomes.count("created") == 1
    assert len(pg.select_rows("api_keys", {"name": "ci"})) == 1


@pytest.mark.slow
def test_two_api_servers_answer_concurrent_registrations_without_a_5xx(
    pg: Store, tmp_path: Path
) -> None:
    _, secret = create_key(pg, "writer", "write")
    headers = {"X-API-Key": secret}
    store_uri = PG.connect()
    with (
        running(["--store", store_uri, "serve"], tmp_path / "a.log") as (one, _),
        running(["--store", store_uri, "serve"], tmp_path / "b.log") as (two, _),
    ):
        fields = {"name": "Race Inc.", "asset_class": "stock", "timezone": "America/New_York"}
        rule = {"id": "spike", "symbol": "RACE", "kind": "price_above", "threshold": 10.0}

        def call(i: int) -> tuple[str, int]:
            base = (one, two)[i % 2]
            kind = ("post", "put", "rule")[i % 3]
            with httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=60) as client:
                if kind == "post":
                    answer = client.post("/instruments", json={"symbol": "RACE", **fields})
                elif kind == "put":
                    answer = client.put("/instruments/RACE", json={**fields, "exchange": f"X{i}"})
                else:
                    answer = client.post("/alerts/rules", json=rule)
            return kind, answer.status_code

        with ThreadPoolExecutor(40) as pool:
            outcomes = list(pool.map(call, range(120)))
    codes = {kind: sorted({code for k, code in outcomes if k == kind}) for kind in ("post", "put")}
    rule_codes = [code for k, code in outcomes if k == "rule"]
    # exactly one request created the instrument: a POST (201) or a PUT (201)
    created = [k for k, code in outcomes if k in ("post", "put") and code == 201]
    assert len(created) == 1, outcomes
    assert set(codes["post"]) <= {201, 409}, outcomes
    assert set(codes["put"]) <= {200, 201}, outcomes
    assert rule_codes.count(201) == 1, outcomes
    assert set(rule_codes) == {201, 409}, outcomes
    stored = pg.instrument("RACE")
    assert stored == Instrument(symbol="RACE", **{**fields, "exchange": stored.exchange})
    assert len(pg.select_rows("alert_rules", {"id": "spike"})) == 1
