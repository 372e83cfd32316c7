"""The backtest engine: target positions in, trades, equity curve and statistics out.

Everything is whole-array NumPy except one short loop over the *trades*
(sizing depends on the cash the previous trade left): a million bars with
thousands of trades take tens of milliseconds.

Rules, per symbol:

* The strategy's target after bar *t*'s close is traded at bar *t+1*'s open
  (``fill="open"``, the default) or at bar *t*'s close (``fill="close"``).
  A target still pending after the last bar is never traded.
* Every change of target closes the open trade (if any) and opens a new one
  when the new target is not flat ("exclusive orders").
* Fill prices move against the trader by ``slippage_bps``; each fill pays
  ``commission_fixed + commission_bps`` of its value.
* Size: ``all_in`` spends the whole cash (less the entry commission) on the
  position; ``fraction`` spends that fraction of it; ``units`` trades a fixed
  number of units, skipping entries the cash cannot pay for. Units are whole
  unless ``fractional``. A target of 0.5 halves the size. Shorts (only with
  ``allow_short``) are sized like longs (no leverage).
* Stop-loss and take-profit are percentages of the entry fill price, watched
  from the entry (its own bar too with open fills) until the exit. A bar that
  opens beyond a level fills at the open; when both levels lie inside one bar
  the stop-loss is assumed to come first. After a stop the position stays
  flat until the target changes again.
* A trade still open after the last bar is marked to the last close (exit
  reason ``open``) and left out of the trade statistics, as backtesting.py does.
* With several symbols the cash is split equally; each symbol trades on its
  own and the statistics describe the summed equity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from marketlake.backtest.data import Bars, FloatArray, IntArray
from marketlake.backtest.stats import compute_stats
from marketlake.backtest.strategies import Strategy
from marketlake.errors import InputError

Fill = Literal["open", "close"]
Sizing = Literal["all_in", "fraction", "units"]
EXIT_REASONS = ("signal", "stop_loss", "take_profit", "open", "ruin")
SIGNAL, STOP_LOSS, TAKE_PROFIT, OPEN, RUIN = range(5)


@dataclass(frozen=True)
class BacktestConfig:
    """How orders are filled, charged and sized; see the module docstring for the rules."""

    cash: float = 10_000.0
    commission_bps: float = 0.0
    commission_fixed: float = 0.0
    slippage_bps: float = 0.0
    fill: Fill = "open"
    fractional: bool = False
    allow_short: bool = False
    sizing: Sizing = "all_in"
    size: float = 1.0
    stop_loss_pct: float | None = None
    take_profit_pct: float | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.cash > 0, "cash", f"cash must be positive, got {self.cash}"),
            (self.commission_bps >= 0, "commission", "commission must not be negative"),
            (
                self.commission_fixed >= 0,
                "commission_fixed",
                "fixed commission must not be negative",
            ),
            (self.slippage_bps >= 0, "slippage", "slippage must not be negative"),
            (self.commission_bps < 10_000, "commission", "commission must be below 10000 bps"),
            (self.slippage_bps < 10_000, "slippage", "slippage must be below 10000 bps"),
            (
                self.fill in ("open", "close"),
                "fill",
                f"fill must be open or close, got {self.fill!r}",
            ),
            (
                self.sizing in ("all_in", "fraction", "units"),
                "sizing",
                f"sizing must be all_in, fraction or units, got {self.sizing!r}",
            ),
            (self.size > 0, "size", f"size must be positive, got {self.size}"),
            (
                self.sizing != "fraction" or self.size <= 1,
                "size",
                f"a fraction of equity must be at most 1, got {self.size}",
            ),
            (
                self.stop_loss_pct is None or 0 < self.stop_loss_pct < 100,
                "stop_loss",
                f"stop-loss must be between 0 and 100 %, got {self.stop_loss_pct}",
            ),
            (
                self.take_profit_pct is None or self.take_profit_pct > 0,
                "take_profit",
                f"take-profit must be positive, got {self.take_profit_pct}",
            ),
        ]
        for ok, name, message in checks:
            if not ok:
                raise InputError(message, param=name)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SymbolRun:
    """One symbol's part of a backtest: its equity per bar and its trades as columns."""

    bars: Bars
    equity: FloatArray
    held: np.ndarray[Any, np.dtype[np.bool_]]
    trades: dict[str, np.ndarray[Any, Any]]
    skipped: int


@dataclass
class BacktestResult:
    """What a backtest produced: equity curve, trade list and statistics."""

    strategy: Strategy
    config: BacktestConfig
    timeframe: str
    runs: list[SymbolRun]
    ts: IntArray
    equity: FloatArray
    trades: pa.Table
    stats: dict[str, Any]
    id: str | None = field(default=None)
    notes: list[str] = field(default_factory=list)  # e.g. large holes in the data

    @property
    def symbols(self) -> list[str]:
        return [run.bars.symbol for run in self.runs]

    def equity_table(self) -> pa.Table:
        """The equity curve: ts, equity and drawdown (a fraction, <= 0)."""
        peak = np.maximum.accumulate(self.equity)
        return pa.table(
            {
                "ts": pa.array(self.ts, pa.timestamp("us", tz="UTC")),
                "equity": self.equity,
                "drawdown": self.equity / peak - 1.0,
            }
        )


def run(
    bars: Sequence[Bars],
    strategy: Strategy,
    config: BacktestConfig | None = None,
    timeframe: str = "",
) -> BacktestResult:
    """Backtest ``strategy`` on one or more symbols' bars."""
    config = config or BacktestConfig()
    if not bars:
        raise InputError("no bars to backtest; check the symbols, timeframe and range")
    cash = config.cash / len(bars)
    runs = []
    for one in bars:
        one.check()
        if len(one) < strategy.min_bars():
            raise InputError(
                f"{strategy.label()} needs at least {strategy.min_bars()} bars, but "
                f"{one.symbol} has {len(one)}{f' {timeframe}' if timeframe else ''} bars in the "
                "range; use a longer range or a smaller timeframe",
                param="start",
            )
        runs.append(simulate(one, strategy.signals(one), config, cash))
    ts, equity = _combine(runs, cash)
    trades = trade_table(runs)
    stats = compute_stats(ts, equity, config.cash, trades, runs)
    _check_affordable(runs, config)
    return BacktestResult(strategy, config, timeframe, runs, ts, equity, trades, stats)


def positions(signals: FloatArray, config: BacktestConfig) -> tuple[IntArray, FloatArray]:
    """The bars where the strategy states a target and the targets, clipped to what
    ``config`` allows; the target holds until the next such bar (flat before the first)."""
    signals = np.asarray(signals, dtype=np.float64)
    at = np.flatnonzero(~np.isnan(signals))
    return at, np.clip(signals[at], -1.0 if config.allow_short else 0.0, 1.0)


def simulate(bars: Bars, signals: FloatArray, config: BacktestConfig, cash: float) -> SymbolRun:
    """Trade a strategy's ``signals`` (one value per bar) on ``bars`` starting with ``cash``."""
    n = len(bars)
    if np.shape(signals) != (n,):
        raise ValueError(f"signals have shape {np.shape(signals)}, expected ({n},)")
    entry, exit_, side, weight = _plan(*positions(signals, config), n, config.fill)
    prices = bars.open if config.fill == "open" else bars.close
    slip = config.slippage_bps / 1e4
    entry_fill = prices[entry] * (1 + side * slip)
    exit_raw = np.where(exit_ < n, prices[np.minimum(exit_, n - 1)], bars.close[-1])
    reason = np.where(exit_ < n, SIGNAL, OPEN)
    if config.stop_loss_pct is not None or config.take_profit_pct is not None:
        _apply_stops(bars, config, entry, exit_, side, entry_fill, exit_raw, reason)
    closed = reason != OPEN
    exit_fill = np.where(closed, exit_raw * (1 - side * slip), exit_raw)
    units, before = _size(entry_fill, exit_fill, side, weight, closed, config, cash)
    taken = units > 0
    columns = {
        "entry_bar": entry,
        "exit_bar": exit_,
        "side": side,
        "size": units,
        "entry_price": entry_fill,
        "exit_price": exit_fill,
        "reason": reason,
        "before": before,
    }
    columns = {k: v[taken] for k, v in columns.items()}
    _settle(columns, config)
    equity, held = _equity(bars, columns, cash)
    if equity.min() <= 0:
        equity = _ruin(bars, columns, equity, held, config)
    return SymbolRun(bars, equity, held, columns, int((~taken).sum()))


def _plan(
    at: IntArray, target: FloatArray, n: int, fill: Fill
) -> tuple[IntArray, IntArray, FloatArray, FloatArray]:
    """Entry bar, exit bar (``n``: still open), side and weight of each trade the targets want."""
    previous = np.empty_like(target)
    previous[:1] = 0.0
    previous[1:] = target[:-1]
    changes = target != previous
    at, value = at[changes], target[changes]
    if fill == "open":
        at = at + 1
    executable = at < n
    at, value = at[executable], value[executable]
    following = np.append(at[1:], n)
    opens = value != 0
    return at[opens], following[opens], np.sign(value[opens]), np.abs(value[opens])


def _apply_stops(
    bars: Bars,
    config: BacktestConfig,
    entry: IntArray,
    exit_: IntArray,
    side: FloatArray,
    entry_fill: FloatArray,
    exit_raw: FloatArray,
    reason: IntArray,
) -> None:
    """Cut trades short where a stop-loss or take-profit level is touched (in place)."""
    n = len(bars)
    first = entry if config.fill == "open" else entry + 1
    last = exit_ - 1 if config.fill == "open" else np.minimum(exit_, n - 1)
    length = np.maximum(last - first + 1, 0)
    if not length.any():
        return
    trade = np.repeat(np.arange(len(entry)), length)
    bar = np.arange(int(length.sum())) - np.repeat(np.cumsum(length) - length, length)
    bar += first[trade]
    s = side[trade]
    stop = entry_fill * (1 - side * (config.stop_loss_pct or np.inf) / 100)
    take = entry_fill * (1 + side * (config.take_profit_pct or np.inf) / 100)
    worst = np.where(s > 0, bars.low[bar], bars.high[bar])
    best = np.where(s > 0, bars.high[bar], bars.low[bar])
    stop_hit = s * (worst - stop[trade]) <= 0
    take_hit = s * (best - take[trade]) >= 0
    rows = np.flatnonzero(stop_hit | take_hit)
    hit_trades, first_row = np.unique(trade[rows], return_index=True)
    rows = rows[first_row]
    b = bar[rows]
    opening = bars.open[b]
    take_at_open = side[hit_trades] * (opening - take[hit_trades]) >= 0
    stop_at_open = side[hit_trades] * (opening - stop[hit_trades]) <= 0
    is_take = take_at_open | ~stop_hit[rows]
    level = np.where(is_take, take[hit_trades], stop[hit_trades])
    exit_raw[hit_trades] = np.where(take_at_open | stop_at_open, opening, level)
    exit_[hit_trades] = b
    reason[hit_trades] = np.where(is_take, TAKE_PROFIT, STOP_LOSS)


def _size(
    entry_fill: FloatArray,
    exit_fill: FloatArray,
    side: FloatArray,
    weight: FloatArray,
    closed: np.ndarray[Any, Any],
    config: BacktestConfig,
    cash: float,
) -> tuple[FloatArray, FloatArray]:
    """Units of each trade and the cash before it.

    Each trade's size depends on the cash the previous ones left. With
    fractional units and no fixed commission that is a running product; in
    every other case it is the one sequential step of the engine, a short
    loop over the trades (not the bars).
    """
    rel = config.commission_bps / 1e4
    cost = entry_fill * (1 + rel)  # cash per unit, entry commission included
    gain = np.where(closed, side * (exit_fill - entry_fill) - rel * (entry_fill + exit_fill), 0.0)
    if config.sizing == "units":
        return _size_units(config.size * weight, cost, gain, config, cash)
    fraction = (config.size if config.sizing == "fraction" else 1.0) * weight
    if config.fractional and config.commission_fixed == 0:
        growth = 1 + fraction * gain / cost  # cash after / cash before, per trade
        before = cash * np.concatenate([[1.0], np.cumprod(growth[:-1])])
        return fraction * before / cost, before
    fixed, whole, start = config.commission_fixed, not config.fractional, cash
    units: list[float] = []
    for f, c, g in zip(fraction.tolist(), cost.tolist(), gain.tolist(), strict=True):
        u = (f * cash - fixed) / c
        if whole:
            u //= 1.0
        if u > 0:
            cash += u * g - 2 * fixed
        else:
            u = 0.0
        units.append(u)
    return np.array(units), _cash_before(np.array(units), gain, fixed, start)


def _cash_before(units: FloatArray, gain: FloatArray, fixed: float, cash: float) -> FloatArray:
    """The cash before each trade: the loop's running sum, redone in NumPy (same order, same
    rounding). Only the last trade can be open; what it would add is never used."""
    change = np.empty(len(units) + 1)
    change[0] = cash
    np.multiply(units, gain, out=change[1:])
    change[1:] -= np.where(units > 0, 2 * fixed, 0.0)
    return np.cumsum(change)[:-1]


def _size_units(
    wanted: FloatArray, cost: FloatArray, gain: FloatArray, config: BacktestConfig, cash: float
) -> tuple[FloatArray, FloatArray]:
    """Fixed units; an entry the cash cannot pay for is skipped."""
    fixed = config.commission_fixed
    if not config.fractional:
        wanted = np.floor(wanted)
    units: list[float] = []
    before: list[float] = []
    for u, c, g in zip(wanted.tolist(), cost.tolist(), gain.tolist(), strict=True):
        before.append(cash)
        if u > 0 and u * c + fixed <= cash:
            cash += u * g - 2 * fixed
            units.append(u)
        else:
            units.append(0.0)
    return np.array(units), np.array(before)


def _settle(columns: dict[str, np.ndarray[Any, Any]], config: BacktestConfig) -> None:
    """Add fees, P&L and return columns (the open trade pays no exit fee)."""
    rel = config.commission_bps / 1e4
    units, p, q = columns["size"], columns["entry_price"], columns["exit_price"]
    closed = columns["reason"] != OPEN
    fee_in = config.commission_fixed + rel * units * p
    fee_out = np.where(closed, config.commission_fixed + rel * units * q, 0.0)
    columns["fee_in"] = fee_in
    columns["fees"] = fee_in + fee_out
    columns["pnl"] = columns["side"] * units * (q - p) - columns["fees"]
    columns["return"] = columns["pnl"] / (units * p)


def _equity(
    bars: Bars, columns: dict[str, np.ndarray[Any, Any]], cash: float
) -> tuple[FloatArray, np.ndarray[Any, np.dtype[np.bool_]]]:
    """Equity at every bar's close: cash when flat, cash plus open P&L when holding.

    The bars split into alternating flat and holding stretches
    ``[0, entry_0) [entry_0, exit_0) [exit_0, entry_1) …``; each stretch is a
    constant plus (units × side) × (close - entry price).
    """
    n = len(bars)
    entry, exit_ = columns["entry_bar"], columns["exit_bar"]
    bounds = np.empty(2 * len(entry) + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, n
    bounds[1:-1:2], bounds[2:-1:2] = entry, exit_
    lengths = np.diff(bounds)
    holding = np.zeros(len(lengths), dtype=bool)
    holding[1::2] = True
    slope = np.zeros(len(lengths))
    slope[1::2] = columns["side"] * columns["size"]
    base = np.empty(len(lengths))  # equity = base + slope * close
    base[0] = cash
    base[1::2] = columns["before"] - columns["fee_in"] - slope[1::2] * columns["entry_price"]
    base[2::2] = columns["before"] + columns["pnl"]
    equity = np.repeat(slope, lengths)
    equity *= bars.close
    equity += np.repeat(base, lengths)
    return equity, np.repeat(holding, lengths)


def _ruin(
    bars: Bars,
    columns: dict[str, np.ndarray[Any, Any]],
    equity: FloatArray,
    held: np.ndarray[Any, Any],
    config: BacktestConfig,
) -> FloatArray:
    """Equity reached zero: close everything at that bar's close and stop trading."""
    at = int(np.argmax(equity <= 0))
    keep = columns["entry_bar"] <= at
    for key in list(columns):
        columns[key] = columns[key][keep]
    if held[at]:
        columns["exit_bar"][-1] = at
        columns["exit_price"][-1] = bars.close[at]
        columns["reason"][-1] = RUIN
        _settle(columns, config)
    held[at:] = False
    equity = equity.copy()
    equity[at:] = 0.0
    return equity


def _combine(runs: list[SymbolRun], cash: float) -> tuple[IntArray, FloatArray]:
    """The summed equity on the union of all symbols' bar times (each carried forward)."""
    if len(runs) == 1:
        return runs[0].bars.ts, runs[0].equity
    ts = np.unique(np.concatenate([r.bars.ts for r in runs]))
    total = np.zeros(len(ts))
    for r in runs:
        at = np.searchsorted(r.bars.ts, ts, side="right") - 1
        total += np.where(at >= 0, r.equity[np.maximum(at, 0)], cash)
    return ts, total


def trade_table(runs: list[SymbolRun]) -> pa.Table:
    """Every symbol's trades, ordered by entry time, as an Arrow table."""
    parts: list[dict[str, np.ndarray[Any, Any]]] = []
    for r in runs:
        c, ts, n = r.trades, r.bars.ts, len(r.bars)
        closed = c["reason"] != OPEN
        exit_ts = ts[np.minimum(c["exit_bar"], n - 1)]
        end = np.where(closed, exit_ts, ts[-1])
        parts.append(
            {
                "symbol": np.full(len(c["size"]), len(parts), dtype=np.int32),
                "side": (c["side"] < 0).astype(np.int8),
                "size": c["size"],
                "entry_time": ts[c["entry_bar"]],
                "entry_price": c["entry_price"],
                "exit_time": exit_ts,
                "closed": closed,
                "exit_price": c["exit_price"],
                "pnl": c["pnl"],
                "return_pct": c["return"] * 100,
                "fees": c["fees"],
                "duration_s": (end - ts[c["entry_bar"]]) / 1e6,
                "exit_reason": c["reason"].astype(np.int8),
            }
        )
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["entry_time"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    stamp = pa.timestamp("us", tz="UTC")
    return pa.table(
        {
            "symbol": _labels(merged["symbol"], [r.bars.symbol for r in runs]),
            "side": _labels(merged["side"], ["long", "short"]),
            "size": merged["size"],
            "entry_time": pa.array(merged["entry_time"], stamp),
            "entry_price": merged["entry_price"],
            "exit_time": pa.array(merged["exit_time"], stamp, mask=~merged["closed"]),
            **{k: merged[k] for k in ("exit_price", "pnl", "return_pct", "fees", "duration_s")},
            "exit_reason": _labels(merged["exit_reason"], list(EXIT_REASONS)),
        }
    )


def _labels(codes: np.ndarray[Any, Any], names: list[str]) -> pa.Array:
    """A string column from small integer codes (no Python string per row)."""
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names)).cast(pa.string())


def _check_affordable(runs: list[SymbolRun], config: BacktestConfig) -> None:
    """Every wanted entry was skipped for want of cash: say so instead of showing nothing."""
    if all(r.skipped and not len(r.trades["size"]) for r in runs):
        symbol = runs[0].bars.symbol
        price = float(runs[0].bars.close[0])
        if config.sizing == "units":
            want, fix = f"{config.size:g} units", "trade fewer units (--size)"
        else:
            want, fix = "one whole unit", "allow fractional units (--fractional)"
        raise InputError(
            f"the cash ({config.cash:,.2f}) never paid for {want} of {symbol} (about "
            f"{price:,.2f} each), so no trade was made; raise the cash or {fix}",
            param="cash",
        )
