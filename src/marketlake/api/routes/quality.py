"""Data-quality reports: ``GET /quality/reports`` and ``GET /quality/reports/{id}``.

Reads the ``quality_reports`` and ``quality_findings`` tables that validation
runs write; their JSON columns (scope, summary, values) come back as JSON.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from marketlake.api.deps import ReadAccess, StoreDep, in_thread
from marketlake.api.errors import problem_responses
from marketlake.api.models import QualityFinding, QualityReportOut, QualityReportSummary
from marketlake.errors import NotFoundError
from marketlake.store import Store

router = APIRouter(prefix="/quality", tags=["quality"])


def _json(text: Any) -> Any:
    if not isinstance(text, str) or not text:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _summary(row: dict[str, Any]) -> QualityReportSummary:
    return QualityReportSummary(
        id=row["id"],
        job_id=row.get("job_id"),
        scope=_json(row["scope"]),
        summary=_json(row["summary"]),
        created_at=row.get("created_at"),
    )


def _mentions(report: QualityReportSummary, symbol: str) -> bool:
    scope = report.scope if isinstance(report.scope, dict) else {}
    symbols = scope.get("symbols") or ([scope["symbol"]] if "symbol" in scope else [])
    return symbol.upper() in [str(s).upper() for s in symbols]


@router.get("/reports", response_model=list[QualityReportSummary], summary="Quality reports")
async def list_reports(
    _: ReadAccess,
    store: StoreDep,
    symbol: Annotated[
        str | None,
        Query(description="Only reports covering this symbol", max_length=64, examples=["AAPL"]),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="How many of the newest")] = 50,
) -> list[QualityReportSummary]:
    """Validation reports, newest first."""
    rows: list[dict[str, Any]] = await in_thread(store.quality_reports)
    reports = [_summary(r) for r in rows]
    if symbol is not None:
        reports = [r for r in reports if _mentions(r, symbol)]
    return reports[:limit]


@router.get(
    "/reports/{report_id}",
    response_model=QualityReportOut,
    summary="One quality report",
    responses=problem_responses(404),
)
async def get_report(
    report_id: Annotated[str, Path(max_length=100, examples=["r-20240304-1"])],
    _: ReadAccess,
    store: StoreDep,
    severity: Annotated[
        Literal["error", "warning"] | None, Query(description="Only findings of this severity")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100_000, description="Findings to return")] = 1000,
) -> QualityReportOut:
    """A report with its findings (the first ``limit`` of them, by time)."""
    return await in_thread(_report, store, report_id, severity, limit)  # type: ignore[no-any-return]


def _report(store: Store, report_id: str, severity: str | None, limit: int) -> QualityReportOut:
    row = store.quality_report(report_id)
    if row is None:
        raise NotFoundError(
            f"unknown quality report {report_id}; list them with GET /api/v1/quality/reports"
        )
    findings = store.quality_findings(report_id, severity=severity, order="time")
    items = [QualityFinding(**{**f, "values": _json(f.get("values"))}) for f in findings[:limit]]
    return QualityReportOut(
        **_summary(row).model_dump(), findings=items, findings_total=len(findings)
    )
