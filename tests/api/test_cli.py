"""``marketlake keys`` and ``serve``, and ``demo`` ending by serving the API."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from marketlake.api.keys import verify_key
from marketlake.cli.app import cli
from marketlake.store import open_store
from tests.api.server import running


def test_keys_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = f"duckdb:///{tmp_path}/k.duckdb"
    assert cli(["--store", store, "keys", "create", "ci", "--scope", "write,read", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["name"] == "ci"
    assert made["scopes"] == ["read", "write"]
    assert cli(["--store", store, "keys", "create", "dash"]) == 0
    shown = capsys.readouterr().out
    assert "it is not shown again" in shown
    assert "mlk_" in shown
    assert cli(["--store", store, "keys", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["name"], k["scopes"]) for k in listed] == [("ci", "read,write"), ("dash", "read")]
    assert made["key"] not in json.dumps(listed)
    assert cli(["--store", store, "keys", "revoke", "ci"]) == 0
    assert "revoked key ci" in capsys.readouterr().out
    assert cli(["--store", store, "keys", "list", "--active", "--json"]) == 0
    assert [k["name"] for k in json.loads(capsys.readouterr().out)] == ["dash"]
    with open_store(store) as opened, pytest.raises(Exception, match="was revoked"):
        verify_key(opened, made["key"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "x", "--scope", "root"], "scope root is not valid"),
        (["keys", "revoke", "nobody"], "no active API key 'nobody'"),
        (
            ["serve", "--workers", "2"],
            "the embedded DuckDB store can be opened by one process only",
        ),
        (["serve", "--log-format", "xml"], "'xml' is not one of 'json', 'console'"),
    ],
)
def test_bad_usage_is_one_line_and_an_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    from marketlake.store import open_store

    open_store(f"duckdb:///{tmp_path}/e.duckdb").close()  # read commands need a store
    code = cli(["--store", f"duckdb:///{tmp_path}/e.duckdb", *args])
    assert code in (1, 2)
    assert message in capsys.readouterr().err.replace("\n", "")


def test_keys_create_twice_with_one_name_conflicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"duckdb:///{tmp_path}/c.duckdb"
    assert cli(["--store", store, "keys", "create", "ci"]) == 0
    assert cli(["--store", store, "keys", "create", "ci"]) == 1
    assert "an active key named 'ci' exists already" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_runs_the_api_with_json_logs(tmp_path: Path) -> None:
    store = f"duckdb:///{tmp_path}/s.duckdb"
    log = tmp_path / "server.log"
    with running(["--store", store, "serve"], log) as (base, _):
        ready = httpx.get(f"{base}/api/v1/ready").json()
        missing = httpx.get(f"{base}/api/v1/bars/NOPE", headers={"X-Request-ID": "req-42"})
        metrics = httpx.get(f"{base}/metrics").text
    assert ready["status"] == "ready"
    assert missing.status_code == 404
    assert "marketlake_http_requests_total" in metrics
    logged = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    line = next(e for e in logged if e.get("request_id") == "req-42")
    assert line["status"] == 404
    assert line["route"] == "/api/v1/bars/{symbol}"
    assert line["level"] == "info"


@pytest.mark.slow
def test_demo_ends_by_serving_its_data(tmp_path: Path) -> None:
    store = f"duckdb:///{tmp_path}/d.duckdb"
    log = tmp_path / "demo.log"
    with running(["--store", store, "demo", "--days", "1"], log, timeout_s=120) as (base, _):
        bars = httpx.get(f"{base}/api/v1/bars/BTCUSDT", params={"limit": 5}).json()
        home = httpx.get(f"{base}/").text
    assert bars["count"] == 5
    assert "MarketLake" in home
