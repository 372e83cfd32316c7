"""Backtests as a service: load the data, run, store the result, read it back.

These are the functions the CLI and the API call. A stored backtest is one row
of the ``backtests`` table: the request (``params``), the statistics, the
trade list and a decimated equity curve, each as JSON.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa

from marketlake.backtest import engine
from marketlake.backtest.data import (
    check_holes,
    load_bars,
    no_bars,
    split_symbols,
    synthetic_bars,
)
from marketlake.backtest.engine import BacktestConfig, BacktestResult
from marketlake.backtest.portfolio import (
    PortfolioConfig,
    PortfolioResult,
    get_portfolio_strategy,
    run_portfolio,
)
from marketlake.backtest.strategies import get_strategy
from marketlake.backtest.walkforward import WalkForwardResult
from marketlake.errors import InputError, NotFoundError
from marketlake.schema import Timeframe, normalize_symbol, utcnow
from marketlake.timeseries.times import iso_z

if TYPE_CHECKING:
    from marketlake.store import Store

STORED_EQUITY_POINTS = 2_000
# The trades column holds the trade list as columns ({"pnl": [...], ...}), about half the
# size of one object per trade; get_backtest gives it back as one dict per trade.


def run_backtest(
    store: Store | None,
    strategy: str,
    params: Mapping[str, object] | None = None,
    *,
    symbols: Sequence[str],
    timeframe: str = "1d",
    start: datetime | None = None,
    end: datetime | None = None,
    config: BacktestConfig | None = None,
    synthetic: bool = False,
    seed: int = 7,
    save: bool = True,
    on_hole: str = "report",
) -> BacktestResult:
    """Run ``strategy`` on stored (or synthetic) bars; store the result unless ``save=False``.

    Parameters and config are checked before any data is read; nothing is
    stored when the backtest fails. The returned result carries the stored
    ``id``. Stretches without bars far longer than the timeframe's closures are
    reported in ``notes`` (``on_hole="report"``) or refused (``"refuse"``).
    """
    chosen = get_strategy(strategy, params)
    config = config or BacktestConfig()
    tf = str(Timeframe.parse(timeframe))
    names = [normalize_symbol(s) for s in symbols]
    if not names:
        raise InputError("give at least one symbol", param="symbols")
    bars = load_for_backtest(store, list(dict.fromkeys(names)), tf, start, end, synthetic, seed)
    holes = check_holes(bars, tf, on_hole)
    result = engine.run(bars, chosen, config, tf)
    result.notes = holes
    if save and store is not None:
        request = {
            "kind": "run",
            "strategy": chosen.name,
            "params": chosen.params(),
            "symbols": names,
            "timeframe": tf,
            "start": None if start is None else iso_z(start),
            "end": None if end is None else iso_z(end),
            "source": "synthetic" if synthetic else "store",
            "config": config.as_dict(),
        }
        result.id = save_result(store, request, result)
    return result


def run_portfolio_backtest(
    store: Store | None,
    strategy: str,
    params: Mapping[str, object] | None = None,
    *,
    symbols: Sequence[str],
    timeframe: str = "1d",
    start: datetime | None = None,
    end: datetime | None = None,
    config: PortfolioConfig | None = None,
    synthetic: bool = False,
    seed: int = 7,
    save: bool = True,
    adjusted: bool = False,
) -> PortfolioResult:
    """Run a portfolio strategy on stored (or synthetic) bars of several symbols with one
    cash account; store the result unless ``save=False``. ``adjusted``: on split- and
    dividend-adjusted bars."""
    chosen = get_portfolio_strategy(strategy, params)
    config = config or PortfolioConfig()
    tf = str(Timeframe.parse(timeframe))
    names = list(dict.fromkeys(normalize_symbol(s) for s in symbols))
    if not names:
        raise InputError("give at least one symbol", param="symbols")
    bars = load_for_backtest(store, names, tf, start, end, synthetic, seed, adjusted=adjusted)
    empty = [b.symbol for b in bars if len(b) == 0]
    if empty:
        raise InputError(
            f"no {tf} bars of {', '.join(empty)} in the range; ingest them or drop the symbol",
            param="symbols",
        )
    result = run_portfolio(bars, chosen, config, tf)
    if save and store is not None:
        request = {
            "strategy": chosen.name,
            "params": {k: str(v) for k, v in (params or {}).items()},
            "symbols": names,
            "timeframe": tf,
            "start": None if start is None else iso_z(start),
            "end": None if end is None else iso_z(end),
            "source": "synthetic" if synthetic else "store",
            "adjusted": adjusted,
            "config": dict(vars(config)),
        }
        result.id = save_portfolio(store, request, result)
    return result


def load_for_backtest(
    store: Store | None,
    names: list[str],
    tf: str,
    start: datetime | None,
    end: datetime | None,
    synthetic: bool,
    seed: int,
    *,
    adjusted: bool = False,
) -> list[Any]:
    if synthetic:
        if start is None or end is None:
            raise InputError("synthetic data needs both start and end", param="start")
        made = {b.symbol: b for b in split_symbols(synthetic_bars(names, tf, start, end, seed))}
        return [made.get(name) or no_bars(name) for name in names]
    if store is None:
        raise InputError("no store given; pass one or use synthetic data", param="store")
    return load_bars(store, names, tf, start, end, adjusted=adjusted)


def save_result(store: Store, request: dict[str, Any], result: BacktestResult) -> str:
    """Store one backtest; return its id."""
    return _save(store, request, result.stats, trade_columns(result.trades), equity_points(result))


def save_portfolio(store: Store, request: dict[str, Any], result: PortfolioResult) -> str:
    """Store one portfolio backtest (its fills as the trades); return its id."""
    fills = {name: result.fills.column(name).to_pylist() for name in result.fills.column_names}
    fills["ts"] = _iso_times(result.fills.column("ts"))
    final = significant(np.nan_to_num(result.weights()[-1])).tolist()
    stats = {**result.stats, "weights": dict(zip(result.symbols, final, strict=True))}
    return _save(store, {"kind": "portfolio", **request}, stats, fills, equity_points(result))


def save_walk_forward(store: Store, request: dict[str, Any], result: WalkForwardResult) -> str:
    """Store a walk-forward run: stitched stats, the windows as its rows, the OOS equity."""
    stats = {**result.stats, "stability": result.stability()}
    return _save(
        store,
        {"kind": "walk_forward", **request},
        stats,
        result.windows_table().to_pydict(),
        equity_points(result),
    )


def _save(store: Store, request: dict[str, Any], stats: Any, trades: Any, equity: Any) -> str:
    now = utcnow()
    row_id = uuid.uuid4().hex[:12]
    store.add_backtest(
        row_id,
        params=_dumps(request),
        stats=_dumps(stats),
        trades=_dumps(trades),
        equity=_dumps(equity),
        created_at=now,
    )
    return row_id


def save_sweep(store: Store, request: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Store the result rows of a parameter sweep as one backtest record; return its id."""
    now = utcnow()
    row_id = uuid.uuid4().hex[:12]
    store.add_backtest(
        row_id,
        params=_dumps({"kind": "sweep", **request}),
        stats=_dumps(rows),
        trades=None,
        equity=None,
        created_at=now,
    )
    return row_id


def get_backtest(store: Store, backtest_id: str) -> dict[str, Any]:
    """A stored backtest as a dict: id, status, request, stats, trades, equity, times."""
    row = store.backtest(backtest_id)
    if row is None:
        raise NotFoundError(
            f"unknown backtest {backtest_id!r}; list stored ones with `marketlake backtest list`"
        )
    return _record(row)


def list_backtests(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """The newest stored backtests (without their trades and equity)."""
    rows = store.backtests(limit)
    return [
        {k: v for k, v in _record(row).items() if k not in ("trades", "equity")} for row in rows
    ]


def trade_columns(trades: pa.Table) -> dict[str, Any]:
    """The trade list as JSON-ready columns (times as ISO strings): how it is stored."""
    columns: dict[str, Any] = {}
    for name in trades.column_names:
        column = trades.column(name)
        if pa.types.is_timestamp(column.type):
            columns[name] = _iso_times(column)
        elif pa.types.is_string(column.type):
            codes = column.combine_chunks().dictionary_encode()
            labels = codes.dictionary.to_pylist()
            columns[name] = [labels[i] for i in codes.indices.to_numpy().tolist()]
        else:
            columns[name] = significant(column.to_numpy())
    return columns


def trade_records(trades: pa.Table | dict[str, Any]) -> list[dict[str, Any]]:
    """The trade list as one dict per trade, from the table or from stored columns."""
    columns = trade_columns(trades) if isinstance(trades, pa.Table) else trades
    values = [v.tolist() if isinstance(v, np.ndarray) else v for v in columns.values()]
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _iso_times(column: pa.ChunkedArray) -> list[str | None]:
    out: list[str | None] = list(iso_strings(column.cast(pa.int64()).fill_null(0).to_numpy()))
    if column.null_count:
        for i in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)).tolist():
            out[i] = None
    return out


def iso_strings(us: np.ndarray[Any, Any]) -> list[str]:
    """ISO 8601 UTC texts of epoch microseconds, whole seconds unless some need more."""
    stamps = np.datetime_as_string(
        us.astype("datetime64[us]"), unit="us" if (us % 1_000_000).any() else "s"
    )
    text: list[str] = np.char.add(stamps, "Z").tolist()
    return text


def significant(values: np.ndarray[Any, Any], digits: int = 12) -> np.ndarray[Any, Any]:
    """``values`` rounded to ``digits`` significant digits, so that JSON stays short."""
    magnitude = np.floor(np.log10(np.abs(values), where=values != 0, out=np.zeros(len(values))))
    with np.errstate(over="ignore", invalid="ignore"):
        scale = 10.0 ** (digits - 1 - magnitude)
        rounded = np.round(values * scale) / scale
    return np.where(np.isfinite(rounded), rounded, values)  # tiny (subnormal) values: as they are


def equity_points(
    result: BacktestResult | PortfolioResult | WalkForwardResult,
    limit: int = STORED_EQUITY_POINTS,
) -> list[list[Any]]:
    """At most ``limit`` [time, equity] pairs keeping the shape (highs and lows) of the curve."""
    from marketlake.backtest.report import decimate

    keep = decimate(result.equity, limit)
    values = significant(result.equity[keep]).tolist()
    return [list(pair) for pair in zip(iso_strings(result.ts[keep]), values, strict=True)]


def _record(row: dict[str, Any]) -> dict[str, Any]:
    def load(text: str | None) -> Any:
        return None if text is None else json.loads(text)

    columns = load(row["trades"])
    trades = None if columns is None else trade_records(columns)
    return {
        "id": row["id"],
        "status": row["status"],
        "request": load(row["params"]),
        "stats": load(row["stats"]),
        "trades": trades,
        "equity": load(row["equity"]),
        "error": row["error"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
    }


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
