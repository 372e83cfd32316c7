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
from pydantic import BaseModel, ConfigDict, Field, model_validator

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

    kind: Literal["run", "portfolio", "walk_forward"] = Field(
        "run",
        description="run: each symbol on its share of the cash; portfolio: one cash account "
        "and target weights; walk_forward: choose parameters in-sample, trade out-of-sample",
    )
    strategy: str = Field(
        examples=["sma_cross"],
        description="sma_cross, rsi_reversion, bollinger_breakout or buy_and_hold; for a "
        "portfolio also equal_weight, inverse_volatility, momentum_top_n or fixed_mix",
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
    rebalance: Literal["bar", "daily", "weekly", "monthly", "signal"] = Field(
        "monthly", description="Portfolio: when to rebalance"
    )
    drift_band: float | None = Field(
        None, gt=0, lt=1, description="Portfolio: also rebalance past this weight drift"
    )
    max_gross: float = Field(1.0, gt=0, description="Portfolio: largest sum of |weights|")
    grid: dict[str, list[int | float | bool]] = Field(
        default_factory=dict,
        examples=[{"fast": [5, 10, 20], "slow": [30, 50]}],
        description="Walk-forward: the values to try per parameter",
    )
    windows: int = Field(5, ge=1, le=50, description="Walk-forward: out-of-sample windows")
    train_ratio: float = Field(3.0, gt=0, le=20, description="Walk-forward: IS / OOS length")
    anchor: Literal["rolling", "anchored"] = "rolling"
    objective: str = Field("sharpe", description="Walk-forward: statistic to choose by")

    @model_validator(mode="after")
    def _fits_kind(self) -> BacktestRequest:
        if self.kind == "walk_forward":
            if not self.grid:
                raise ValueError("a walk_forward needs a grid of parameter values")
            combos = 1
            for values in self.grid.values():
                combos *= max(len(values), 1)
            if combos > MAX_API_GRID:
                raise ValueError(
                    f"the grid has {combos} combinations; the API runs at most {MAX_API_GRID} "
                    "(use `marketlake backtest walk-forward` for more)"
                )
        if self.kind == "portfolio" and (
            self.sizing != "all_in" or self.stop_loss_pct or self.take_profit_pct
        ):
            raise ValueError(
                "sizing, stop_loss_pct and take_profit_pct do not apply to a portfolio "
                "(weights size its positions)"
            )
        return self


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


MAX_API_GRID = 1_000
_NOT_RULES = {"kind", "strategy", "params", "symbols", "timeframe", "start", "end", "synthetic"}
_PORTFOLIO = {"rebalance", "drift_band", "max_gross"}
_WALK = {"grid", "windows", "train_ratio", "anchor", "objective"}


def _run(store: Store, body: BacktestRequest) -> str:
    from marketlake.backtest import BacktestConfig, run_backtest

    start = parse_time(body.start, param="start") if body.start else None
    end = parse_time(body.end, param="end") if body.end else None
    check_range(start, end)
    if body.kind == "portfolio":
        return _portfolio(store, body, start, end)
    if body.kind == "walk_forward":
        return _walk_forward(store, body, start, end)
    rules = body.model_dump(exclude=_NOT_RULES | _PORTFOLIO | _WALK)
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


def _portfolio(store: Store, body: BacktestRequest, start: Any, end: Any) -> str:
    from marketlake.backtest.portfolio import PortfolioConfig
    from marketlake.backtest.runs import run_portfolio_backtest

    config = PortfolioConfig(
        cash=body.cash,
        rebalance=body.rebalance,
        drift_band=body.drift_band,
        fill=body.fill,
        fractional=body.fractional,
        allow_short=body.allow_short,
        max_gross=body.max_gross,
        commission_bps=body.commission_bps,
        commission_fixed=body.commission_fixed,
        slippage_bps=body.slippage_bps,
    )
    result = run_portfolio_backtest(
        store,
        body.strategy,
        body.params,
        symbols=body.symbols,
        timeframe=body.timeframe,
        start=start,
        end=end,
        config=config,
        synthetic=body.synthetic,
    )
    assert result.id is not None
    return result.id


def _walk_forward(store: Store, body: BacktestRequest, start: Any, end: Any) -> str:
    from marketlake.backtest import BacktestConfig
    from marketlake.backtest.runs import load_for_backtest, save_walk_forward
    from marketlake.backtest.strategies import coerce, get_strategy
    from marketlake.backtest.walkforward import walk_forward
    from marketlake.errors import InputError
    from marketlake.schema import Timeframe, normalize_symbol

    known = {p.name: p for p in get_strategy(body.strategy).parameters()}
    unknown = sorted(set(body.grid) - set(known))
    if unknown:
        raise InputError(
            f"unknown parameter {unknown[0]!r} for strategy {body.strategy}; valid: "
            f"{', '.join(known)}",
            param="grid",
        )
    grid = {k: [coerce(known[k], v) for v in values] for k, values in body.grid.items()}
    tf = str(Timeframe.parse(body.timeframe))
    names = list(dict.fromkeys(normalize_symbol(s) for s in body.symbols))
    bars = load_for_backtest(store, names, tf, start, end, body.synthetic, 7)
    config = BacktestConfig(**body.model_dump(exclude=_NOT_RULES | _PORTFOLIO | _WALK))
    result = walk_forward(
        bars,
        body.strategy,
        grid,
        config,
        windows=body.windows,
        train_ratio=body.train_ratio,
        anchor=body.anchor,
        objective=body.objective,
        jobs=1,  # inside the server: no worker processes
        timeframe=tf,
    )
    request = body.model_dump(mode="json")
    return save_walk_forward(store, request, result)


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
