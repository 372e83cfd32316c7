"""Hostile input to the API: path traversal, oversized or poisoned bodies, NUL bytes,
forged forwarding headers. Each answer is a 4xx with one clear line, never a 5xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from marketlake.config import Settings
from marketlake.errors import InputError
from marketlake.providers.csv.reader import CsvProvider
from marketlake.store import Store
from tests.api.conftest import bearer
from tests.api.test_routes import _finished

PRICES = "ts,open,high,low,close,volume\n2024-03-04,1,2,0.5,1.5,100\n2024-03-05,1.5,2,1,1.8,90\n"


@pytest.fixture
def csv_tree(tmp_path: Path) -> Path:
    """``csv/`` (the CSV directory, with AAPL.csv) beside ``SECRET/PRICES.csv``."""
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "AAPL.csv").write_text(PRICES)
    (tmp_path / "SECRET").mkdir()
    (tmp_path / "SECRET" / "PRICES.csv").write_text(PRICES)
    return tmp_path


def _ingest(symbol: str) -> dict[str, Any]:
    return {
        "provider": "csv",
        "symbols": [symbol],
        "timeframe": "1d",
        "start": "2024-03-01",
        "end": "2024-03-10",
    }


@pytest.mark.parametrize(
    "symbol",
    [
        "../../../SECRET/PRICES",
        "../SECRET/PRICES",
        "/etc/passwd",
        "..%2FSECRET%2FPRICES",
        "%2e%2e/SECRET/PRICES",
        "..",
        ".hidden",
        "A//B",
        "BTC/",
    ],
)
async def test_path_syntax_in_an_ingest_symbol_is_422_and_nothing_is_read(
    make_client: Any, seeded: Store, keys: dict[str, str], csv_tree: Path, symbol: str
) -> None:
    async with make_client(csv_dir=csv_tree / "csv") as client:
        r = await client.post(
            "/api/v1/ingest/run", json=_ingest(symbol), headers=bearer(keys["write"])
        )
    assert r.status_code == 422, r.text
    assert r.json()["param"] == "symbol"
    assert seeded.list_jobs() == []
    assert not any("SECRET" in i.symbol for i in seeded.list_instruments())


async def test_a_symlink_out_of_the_csv_dir_is_refused_without_the_server_path(
    make_client: Any, seeded: Store, keys: dict[str, str], csv_tree: Path
) -> None:
    (csv_tree / "csv" / "LEAK.csv").symlink_to(csv_tree / "SECRET" / "PRICES.csv")
    async with make_client(csv_dir=csv_tree / "csv") as client:
        r = await client.post(
            "/api/v1/ingest/run", json=_ingest("leak"), headers=bearer(keys["write"])
        )
        assert r.status_code == 202
        job = await _finished(client, r.json()["job_id"])
    assert job["status"] == "failed"
    assert "outside the CSV directory" in job["error"]
    assert str(csv_tree) not in job["error"]
    assert seeded.count_bars("LEAK", "1d") == 0


async def test_a_missing_csv_file_does_not_reveal_the_server_path(
    make_client: Any, keys: dict[str, str], csv_tree: Path
) -> None:
    async with make_client(csv_dir=csv_tree / "csv") as client:
        r = await client.post(
            "/api/v1/ingest/run", json=_ingest("MSFT"), headers=bearer(keys["write"])
        )
        job = await _finished(client, r.json()["job_id"])
    assert job["status"] == "failed"
    assert "no file MSFT.csv in the CSV directory" in job["error"]
    assert str(csv_tree) not in job["error"]


async def test_a_csv_file_inside_the_dir_still_ingests(
    make_client: Any, seeded: Store, keys: dict[str, str], csv_tree: Path
) -> None:
    async with make_client(csv_dir=csv_tree / "csv") as client:
        r = await client.post(
            "/api/v1/ingest/run", json=_ingest("aapl"), headers=bearer(keys["write"])
        )
        job = await _finished(client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert seeded.count_bars("AAPL", "1d") == 2


def test_the_csv_provider_confines_every_path(csv_tree: Path) -> None:
    settings = Settings(_env_file=None, csv_dir=csv_tree / "csv")  # type: ignore[call-arg]
    provider = CsvProvider(settings)
    assert provider.file_for("aapl") == (csv_tree / "csv" / "AAPL.csv").resolve()
    (csv_tree / "csv" / "SUB").symlink_to(csv_tree / "SECRET")
    with pytest.raises(InputError, match="outside the CSV directory"):
        provider.file_for("SUB/PRICES")
    for bad in ("../SECRET/PRICES", "/SECRET/PRICES", "A/../../SECRET/PRICES"):
        with pytest.raises(InputError, match="no path syntax"):
            provider.file_for(bad)
