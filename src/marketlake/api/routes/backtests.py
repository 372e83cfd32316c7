"""Backtests: ``POST /backtests`` runs one and stores it, ``GET /backtests/{id}`` reads it back.

A backtest over a million bars takes well under a second, so POST runs it
in a worker thread and answers 201 with the stored result (statistics, trade
list and a decimated equity curve) and its URL in ``Location``. Bad input
(an unknown strategy or parameter, fast >= slow, too few bars) is a 422
problem and stores nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from marketlake.api.deps import ReadAccess, StoreDep, WriteAccess, in_thread
from marketlake.api.errors import problem_responses
from marketlake.schema import parse_time
from marketlake.store import Store
from marketlake.store.base import check_range

router = APIRouter(prefix="/backtests", tags=["backtests"])


class BacktestRequest(BaseModel):
    """One backtest: strategy and parameters, data (stored or synthetic) and trading rules."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "strategy": "sma_cross",
                    "params": {"fast": 10, "slow": 30},
                    "symbols": ["AAPL"],
                    "timeframe": "1h",
                    "start": "2024-03-04",
                    "end": "2024-03-09",
                    "commission_bps": 5,
                }
            ]
        },
    )

    strategy: str = Field(
        examples=["sma_cross"],
        description="sma_cross, rsi_reversion, bollinger_breakout or buy_and_hold",
    )
    params: dict[str, int | float | bool | str] = Field(
        default_factory=dict, examples=[{"fast": 10, "slow": 30}]
    )
    symbols: list[str] = Field(min_length=1, max_length=100, examples=[["AAPL"]])
    timeframe: str = Field("1d", examples=["1h"], description="Rolled up on the fly if needed")
    start: str | None = Field(None, examples=["2024-03-04"], description="Inclusive, ISO, UTC")
    end: str | None = Field(None, examples=["2024-03-09"], description="Exclusive")
    synthetic: bool = Field(False, description="Generated bars instead of stored ones")
    cash: float = Field(10_000.0, gt=0)
    commission_bps: float = Field(0.0, ge=0, description="Per fill, in basis points")
    commission_fixed: float = Field(0.0, ge=0, description="Per fill, in cash")
    slippage_bps: float = Field(0.0, ge=0)
    fill: Literal["open", "close"] = Field("open", description="Next bar's open or this close")
    fractional: bool = False
    allow_short: bool = False
    sizing: Literal["all_in", "fraction", "units"] = "all_in"
    size: float = Field(1.0, gt=0, description="The fraction or the units of the sizing")
    stop_loss_pct: float | None = Field(None, gt=0, lt=100)
    take_profit_pct: float | None = Field(None, gt=0)


class BacktestOut(BaseModel):
    """A stored backtest: the request, statistics, trades and equity as [time, value] pairs."""

    id: str = Field(examples=["5c0ffee1d2a3"])
    status: str = Field(examples=["succeeded"])
    request: dict[str, Any]
    stats: Any = Field(description="Statistics (a list of rows for a sweep)")
    trades: list[dict[str, Any]] | None = None
    equity: list[list[Any]] | None = None
    error: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None


def _run(store: Store, body: BacktestRequest) -> str:
    from marketlake.backtest import BacktestConfig, run_backtest

    start = parse_time(body.start, param="start") if body.start else None
    end = parse_time(body.end, param="end") if body.end else None
    check_range(start, end)
    rules = body.model_dump(
        exclude={"strategy", "params", "symbols", "timeframe", "start", "end", "synthetic"}
    )
    result = run_backtest(
        store,
        body.strategy,
        body.params,
        symbols=body.symbols,
        timeframe=body.timeframe,
        start=start,
        end=end,
        config=BacktestConfig(**rules),
        synthetic=body.synthetic,
    )
    assert result.id is not None
    return result.id


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BacktestOut,
    summary="Run and store a backtest",
    responses=problem_responses(404, 422),
)
async def create_backtest(
    body: BacktestRequest, _: WriteAccess, store: StoreDep, response: Response
) -> BacktestOut:
    """Run the backtest now; the answer is the stored result (also at ``Location``)."""
    from marketlake.backtest import get_backtest

    backtest_id: str = await in_thread(_run, store, body)
    response.headers["Location"] = f"/api/v1/backtests/{backtest_id}"
    return BacktestOut(**await in_thread(get_backtest, store, backtest_id))


@router.get(
    "/{backtest_id}",
    response_model=BacktestOut,
    summary="One stored backtest",
    responses=problem_responses(404),
)
async def read_backtest(
    backtest_id: Annotated[str, Path(max_length=64, examples=["5c0ffee1d2a3"])],
    _: ReadAccess,
    store: StoreDep,
    trades: Annotated[bool, Query(description="Include the trade list")] = True,
) -> BacktestOut:
    """A stored backtest or sweep, by id."""
    from marketlake.backtest import get_backtest

    record = await in_thread(get_backtest, store, backtest_id)
    if not trades:
        record["trades"] = None
    return BacktestOut(**record)
