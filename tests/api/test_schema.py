"""Schemathesis against the app's own /openapi.json: no 5xx, no response off the schema."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from marketlake.api import create_app
from marketlake.api.keys import create_key
from marketlake.schema import Instrument
from marketlake.store import open_store
from tests.api.conftest import settings as api_settings
from tests.conftest import bars_for


def _app() -> Any:
    store = open_store("duckdb:///:memory:")
    store.add_instrument(Instrument(symbol="AAPL"))
    store.write_bars(bars_for(["AAPL"], "1h", end="2024-03-12"))
    HEADERS["X-API-Key"] = create_key(store, "schemathesis", "admin")[1]
    return create_app(api_settings(api_rate_limit_per_minute=0), store)


HEADERS: dict[str, str] = {}
# Server-sent event routes never end by design (live, alerts) or may pace for hours
# (replay); tests/api/test_stream_routes.py drives them with a reader that stops.
schema = schemathesis.openapi.from_asgi("/openapi.json", _app()).exclude(
    path_regex=r"^/api/v1/(stream/live|alerts/stream|replay/)"
)


@pytest.mark.slow
@schema.parametrize()
# derandomize: the same cases on every run, so a CI result is reproducible; a bug a
# random run finds (null symbol on POST /alerts/rules) gets its own test where it belongs.
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi_schema(case: Any) -> None:
    # Auth is tested by the matrix in test_auth.py (these calls carry an admin key), and
    # semantic checks (start before end, a real cursor) make some schema-valid input 422.
    case.call_and_validate(
        headers=HEADERS, excluded_checks=[checks.ignored_auth, checks.positive_data_acceptance]
    )


def test_openapi_documents_every_route_with_problems_and_examples() -> None:
    spec = create_app(api_settings()).openapi()
    paths = spec["paths"]
    assert set(paths) >= {  # the core routes; streaming and backtests add theirs
        "/api/v1/health",
        "/api/v1/ready",
        "/api/v1/instruments",
        "/api/v1/instruments/{symbol}",
        "/api/v1/bars/{symbol}",
        "/api/v1/bars/{symbol}/latest",
        "/api/v1/prices/{symbol}",
        "/api/v1/prices/{symbol}/latest",
        "/api/v1/ingest/run",
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/quality/reports",
        "/api/v1/quality/reports/{report_id}",
        "/api/v1/keys",
        "/api/v1/keys/{key_id}",
    }
    bars = paths["/api/v1/bars/{symbol}"]["get"]
    assert set(bars["responses"]["200"]["content"]) == {
        "application/json",
        "text/csv",
        "application/vnd.apache.arrow.stream",
        "application/vnd.apache.parquet",
    }
    problem = bars["responses"]["422"]["content"]["application/problem+json"]
    assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert problem["example"]["status"] == 422
    for code in ("401", "403", "404", "429", "503"):
        assert code in bars["responses"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert set(spec["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
            assert operation.get("description"), f"{method} {path} has no description"
