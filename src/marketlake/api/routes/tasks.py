"""Store work beyond ingest, as recorded jobs: validate, aggregate, repair, CSV import, sweep.

- ``POST /validate/run``: check stored bars against the quality rules (the report is
  stored, as by `marketlake validate`);
- ``POST /aggregate/run``: build roll-ups (`marketlake aggregate`);
- ``POST /repair/run``: re-fetch the gaps of a series (`marketlake repair`);
- ``POST /import/csv?symbol=…``: the request body is a CSV file of bars, imported as
  `marketlake import-csv` does (within the API's body size limit);
- ``POST /sweep/run``: backtest a parameter grid and store the ranked rows
  (`marketlake backtest sweep`).

Each runs to its end in a worker thread, is recorded in ``jobs`` (or, for the sweep,
``backtests``) and answers 201 with the outcome. All need the write scope, as
``POST /ingest/run``. The functions below do the work; the client's local transport
calls the same ones, so both transports give the same answers and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from marketlake.api.deps import ContextDep, WriteAccess, in_thread
from marketlake.api.errors import problem_responses
from marketlake.api.routes.backtests import MAX_API_GRID, BacktestRequest
from marketlake.config import Settings
from marketlake.errors import InputError, MarketLakeError
from marketlake.schema import Timeframe, normalize_symbol, parse_time
from marketlake.store import Store
from marketlake.store.base import check_range

router = APIRouter(tags=["jobs"])

T = TypeVar("T")


def plain(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` as JSON would carry it (times as ISO strings): equal on both transports."""
    found: dict[str, Any] = json.loads(json.dumps(value, default=_default))
    return found


def _default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _range(start: str | None, end: str | None) -> tuple[Any, Any]:
    begin = parse_time(start, param="start") if start else None
    stop = parse_time(end, param="end") if end else None
    check_range(begin, stop)
    return begin, stop


def as_job(store: Store, kind: str, params: dict[str, Any], work: Callable[[str], T]) -> T:
    """Run ``work(job_id)`` as a recorded job of ``kind``: running, then succeeded or failed."""
    job = store.create_job(kind, plain(params))
    store.update_job(job.id, status="running")
    try:
        result = work(job.id)
    except MarketLakeError as exc:
        store.update_job(job.id, status="failed", error=exc.message)
        raise
    except Exception as exc:
        store.update_job(job.id, status="failed", error=f"internal error: {exc!r}")
        raise
    return result


def job_record(store: Store, job_id: str) -> dict[str, Any]:
    from marketlake.api.routes.jobs import _job

    found: dict[str, Any] = _job(store.get_job(job_id)).model_dump(mode="json")
    return found


# -- validate -----------------------------------------------------------------------------


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    symbols: list[str] | None = Field(None, max_length=1000, description="Default: all stored")
    timeframes: list[str] | None = Field(None, description="Default: every stored one")
    start: str | None = Field(None, description="Only bars from this time (ISO, UTC)")
    end: str | None = Field(None, description="Only bars before this time")


def validate(settings: Settings, store: Store, body: ValidateRequest) -> dict[str, Any]:
    """Validate stored bars; the report (stored) with its findings as JSON rows."""
    from marketlake.quality.checks import validate_store
    from marketlake.quality.policy import QualityPolicy

    begin, stop = _range(body.start, body.end)
    symbols = [normalize_symbol(s) for s in body.symbols or []]
    for symbol in symbols:
        store.instrument(symbol)
    frames = [str(Timeframe.parse(t)) for t in body.timeframes or []]

    def work(job_id: str) -> dict[str, Any]:
        found = validate_store(
            store, symbols or None, frames or None, begin, stop,
            policy=QualityPolicy.from_settings(settings),
        )  # fmt: skip
        report_id = found.id or ""
        summary = found.summary()
        store.update_job(
            job_id, status="succeeded",
            summary={"report_id": report_id, **{k: summary[k] for k in ("findings", "errors",
                                                                          "warnings")}},
        )  # fmt: skip
        findings = [{**f.record(report_id), "values": f.values} for f in found.findings]
        return plain({"job_id": job_id, "id": report_id, "summary": summary, "findings": findings})

    return as_job(store, "validate", body.model_dump(), work)


@router.post(
    "/validate/run",
    status_code=status.HTTP_201_CREATED,
    summary="Validate stored bars (a recorded job)",
    responses=problem_responses(404, 422),
)
async def validate_route(body: ValidateRequest, _: WriteAccess, ctx: ContextDep) -> Any:
    """Check stored bars against the quality rules; the stored report and its findings."""
    return await in_thread(validate, ctx.settings, ctx.store, body)


# -- aggregate ----------------------------------------------------------------------------


class AggregateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    symbols: list[str] | None = Field(None, max_length=1000, description="Default: all")
    from_tf: str = Field("1m", examples=["1m"], description="Timeframe to roll up")
    to: list[str] = Field(min_length=1, examples=[["5m", "1h", "1d"]])
    start: str | None = None
    end: str | None = None
    replace_sources: bool | None = Field(
        None, description="Overwrite bars of another source (default: the setting)"
    )


def aggregate(settings: Settings, store: Store, body: AggregateRequest) -> dict[str, Any]:
    """Build roll-ups; one row per (symbol, target timeframe)."""
    from marketlake.ingest.rollups import aggregate_store

    begin, stop = _range(body.start, body.end)
    Timeframe.parse(body.from_tf)
    for target in body.to:
        Timeframe.parse(target)
    symbols = [normalize_symbol(s) for s in body.symbols or []]
    for symbol in symbols:
        store.instrument(symbol)
    replace = (
        settings.rollup_replace_sources if body.replace_sources is None else body.replace_sources
    )

    def work(job_id: str) -> dict[str, Any]:
        results = aggregate_store(
            store, symbols or None, body.from_tf, body.to, begin, stop, replace_sources=replace
        )
        rows = [r.as_dict() for r in results]
        store.update_job(
            job_id,
            status="succeeded",
            summary={"series": len(rows), "inserted": sum(r.get("inserted", 0) for r in rows)},
        )
        return plain({"job_id": job_id, "rows": rows})

    return as_job(store, "aggregate", body.model_dump(), work)


@router.post(
    "/aggregate/run",
    status_code=status.HTTP_201_CREATED,
    summary="Build roll-ups (a recorded job)",
    responses=problem_responses(404, 422),
)
async def aggregate_route(body: AggregateRequest, _: WriteAccess, ctx: ContextDep) -> Any:
    """Roll stored bars up to coarser timeframes; one row per series built."""
    return await in_thread(aggregate, ctx.settings, ctx.store, body)


# -- repair -------------------------------------------------------------------------------


class RepairRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    symbol: str = Field(examples=["AAPL"])
    timeframe: str = Field("1m", examples=["1m"])
    provider: str | None = Field(None, description="Default: where the stored bars came from")
    start: str | None = None
    end: str | None = None


def repair(settings: Settings, store: Store, body: RepairRequest) -> dict[str, Any]:
    """Fill the gaps of a series from its provider; the recorded ``repair`` job."""
    from marketlake.ingest.repair import repair_gaps, source_provider
    from marketlake.providers import get_provider
    from marketlake.quality.policy import QualityPolicy

    symbol = normalize_symbol(body.symbol)
    store.instrument(symbol)
    tf = str(Timeframe.parse(body.timeframe))
    begin, stop = _range(body.start, body.end)
    source = get_provider(body.provider or source_provider(store, symbol, tf), settings)

    async def run() -> Any:
        try:
            return await repair_gaps(
                store, source, symbol, tf, begin, stop,
                policy=QualityPolicy.from_settings(settings),
            )  # fmt: skip
        finally:
            await source.aclose()

    result = _run_coroutine(run)
    record = job_record(store, result.job_id)
    record["summary"] = plain({**(record.get("summary") or {}), **result.summary()})
    return record


def _run_coroutine(work: Callable[[], Any]) -> Any:
    """Run a coroutine from this (worker) thread, or beside a running loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work())
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


@router.post(
    "/repair/run",
    status_code=status.HTTP_201_CREATED,
    summary="Fill the gaps of a series (a recorded job)",
    responses=problem_responses(404, 422),
)
async def repair_route(body: RepairRequest, _: WriteAccess, ctx: ContextDep) -> Any:
    """Re-fetch only the missing ranges of a stored series; the finished job."""
    return await in_thread(repair, ctx.settings, ctx.store, body)


# -- CSV import ---------------------------------------------------------------------------


class ImportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    symbol: str
    timeframe: str | None = None
    tz: str | None = None
    on_error: Literal["fail", "skip"] = "fail"
    replace: bool = False
    delimiter: str = Field(",", min_length=1, max_length=1)
    date_format: str | None = None
    decimal: Literal[".", ","] = "."


def import_file(
    settings: Settings, store: Store, path: str, options: ImportOptions
) -> dict[str, Any]:
    """Import a CSV file of bars (as `marketlake import-csv`); the recorded ``import`` job."""
    from marketlake.ingest.csv_import import import_csv
    from marketlake.quality.policy import QualityPolicy

    result = import_csv(
        store,
        path,
        options.symbol,
        timeframe=options.timeframe,
        tz=options.tz,
        on_error=options.on_error,
        delimiter=options.delimiter,
        date_format=options.date_format,
        decimal=options.decimal,
        on_conflict="replace" if options.replace else "ignore",
        policy=QualityPolicy.from_settings(settings),
        one_transaction_bytes=settings.import_one_transaction_mib << 20,
    )
    record = job_record(store, result.job_id)
    summary = {**(record.get("summary") or {}), **result.summary()}
    summary.pop("path", None)  # on the server, a temporary file
    record["summary"] = plain(summary)
    record["params"] = {k: v for k, v in (record.get("params") or {}).items() if k != "path"}
    return record


@router.post(
    "/import/csv",
    status_code=status.HTTP_201_CREATED,
    summary="Import a CSV file of bars (the request body)",
    responses=problem_responses(404, 413, 422),
    openapi_extra={
        "requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}, "required": True}
    },
)
async def import_route(
    request: Request,
    _: WriteAccess,
    ctx: ContextDep,
    symbol: Annotated[str, Query(max_length=64, examples=["AAPL"])],
    timeframe: Annotated[
        str | None, Query(description="Inferred from the rows if left out")
    ] = None,
    tz: Annotated[str | None, Query(description="IANA timezone of naive times")] = None,
    on_error: Annotated[Literal["fail", "skip"], Query()] = "fail",
    replace: Annotated[bool, Query(description="Overwrite differing stored bars")] = False,
    delimiter: Annotated[str, Query(min_length=1, max_length=1)] = ",",
    date_format: Annotated[str | None, Query(max_length=100)] = None,
    decimal: Annotated[Literal[".", ","], Query()] = ".",
) -> Any:
    """The body is the file (at most ``MARKETLAKE_API_MAX_BODY_BYTES``); the finished job."""
    options = ImportOptions(
        symbol=symbol, timeframe=timeframe, tz=tz, on_error=on_error, replace=replace,
        delimiter=delimiter, date_format=date_format, decimal=decimal,
    )  # fmt: skip
    data = await request.body()
    if not data:
        raise InputError("the request body is empty: send the CSV file as the body")
    fd, path = tempfile.mkstemp(suffix=".csv", prefix="marketlake-upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return await in_thread(import_file, ctx.settings, ctx.store, path, options)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


# -- sweep --------------------------------------------------------------------------------


class SweepRequest(BacktestRequest):
    """A parameter sweep: the backtest fields plus ``grid`` and ``sort``."""

    kind: Literal["sweep"] = "sweep"  # type: ignore[assignment]
    sort: str = Field("sharpe", description="Statistic to rank by, best first")

    @model_validator(mode="after")
    def _grid(self) -> SweepRequest:
        if not self.grid:
            raise ValueError("a sweep needs a grid of parameter values")
        combos = 1
        for values in self.grid.values():
            combos *= max(len(values), 1)
        if combos > MAX_API_GRID:
            raise ValueError(
                f"the grid has {combos} combinations; the API runs at most {MAX_API_GRID} "
                "(use `marketlake backtest sweep` for more)"
            )
        return self


_NOT_CONFIG = {
    "kind", "strategy", "params", "symbols", "timeframe", "start", "end", "synthetic",
    "rebalance", "drift_band", "max_gross", "grid", "windows", "train_ratio", "anchor",
    "objective", "sort",
}  # fmt: skip


def sweep(store: Store, body: SweepRequest) -> dict[str, Any]:
    """Backtest every combination of the grid; the stored id and the rows, best first."""
    from marketlake.backtest import BacktestConfig
    from marketlake.backtest.runs import load_for_backtest, save_sweep
    from marketlake.backtest.sweep import parse_grid, run_sweep, sort_rows

    begin, stop = _range(body.start, body.end)
    tf = str(Timeframe.parse(body.timeframe))
    names = list(dict.fromkeys(normalize_symbol(s) for s in body.symbols))
    # the grid goes through the CLI's parser: the same checks and messages
    grid = parse_grid(
        body.strategy,
        [f"{k}={','.join(str(v) for v in values)}" for k, values in body.grid.items()],
    )
    sort_rows([], body.sort)  # an unknown sort fails before the work
    bars = load_for_backtest(store, names, tf, begin, stop, body.synthetic, 7)
    config = BacktestConfig(**body.model_dump(exclude=_NOT_CONFIG))
    result = run_sweep(bars, body.strategy, grid, config, jobs=1)  # no worker processes
    rows = sort_rows(result.rows, body.sort)
    request = {
        "strategy": body.strategy, "grid": grid, "symbols": names, "timeframe": tf,
        "start": begin, "end": stop, "config": config.as_dict(), "sort": body.sort,
        "source": "synthetic" if body.synthetic else "store",
    }  # fmt: skip
    sweep_id = save_sweep(store, request, rows)
    return plain({"id": sweep_id, "sort": body.sort, "skipped": len(result.skipped), "rows": rows})


@router.post(
    "/sweep/run",
    status_code=status.HTTP_201_CREATED,
    summary="Run and store a parameter sweep",
    responses=problem_responses(404, 422),
)
async def sweep_route(body: SweepRequest, _: WriteAccess, ctx: ContextDep) -> Any:
    """Backtest every combination of ``grid``; the rows ranked by ``sort``, best first."""
    return await in_thread(sweep, ctx.store, body)
