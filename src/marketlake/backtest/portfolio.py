"""The portfolio engine: target weights per symbol in, one shared cash account out.

A :class:`PortfolioStrategy` looks at a :class:`Panel` (the bars of every symbol on
one union time line) and returns, for each row, the target weight of each symbol
after that row's close (NaN row: no opinion). The engine turns those targets into
orders on the rows the rebalancing rule picks, fills them, and keeps one cash
account for all symbols.

Rules:

* **When**: ``rebalance`` is ``bar`` (every row with targets), ``daily``,
  ``weekly`` or ``monthly`` (the first row of each new UTC day, ISO week or month,
  as bt's ``RunDaily``/``RunWeekly``/``RunMonthly`` do), or ``signal`` (only the
  symbols whose target changed). With ``drift_band`` set, any row where a held
  weight strays more than that from its last target also rebalances.
* **Fills**: a decision after row *t*'s close fills at row *t+1*'s open
  (``fill="open"``) or at row *t*'s close (``fill="close"``). A symbol only
  trades on its own bars: an order for a symbol without a bar on the fill row
  waits for the symbol's next bar (stocks beside 24/7 crypto).
* **Sizing**: the target value of a symbol is its weight times the portfolio
  value at the fill (held positions marked at their fill price when they have
  a bar, else at their last close). Units are whole unless ``fractional``
  (rounded toward zero). Sells fill before buys; buys that the cash cannot pay
  for (fees, slippage, whole units) are scaled down together.
* **Costs**: fills move against the trader by ``slippage_bps``; each fill pays
  ``commission_fixed + commission_bps`` of its value.
* **Shorts**: negative weights need ``allow_short``; when the gross weight
  (the sum of absolute weights) exceeds ``max_gross`` the targets are scaled
  down to it.
* **Corporate actions**: run it on adjusted bars (``--adjusted``) so that a split
  is not a price jump.

Per-symbol signal strategies (:mod:`marketlake.backtest.strategies`) run as the
special case :class:`SignalWeights`: each symbol's signal times ``1/N``,
rebalanced on signal.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numba
import numpy as np
import pyarrow as pa

from marketlake.backtest.data import Bars, FloatArray, IntArray
from marketlake.backtest.stats import US_PER_DAY, US_PER_YEAR, iso_us, risk_stats
from marketlake.backtest.strategies import Scalar, Strategy, coerce, get_strategy, param
from marketlake.errors import InputError

Rebalance = Literal["bar", "daily", "weekly", "monthly", "signal"]
REBALANCE_CHOICES: tuple[str, ...] = ("bar", "daily", "weekly", "monthly", "signal")


@dataclass(frozen=True)
class PortfolioConfig:
    """How a portfolio is rebalanced, filled, charged and sized (see the module docstring)."""

    cash: float = 10_000.0
    rebalance: Rebalance = "monthly"
    drift_band: float | None = None
    fill: Literal["open", "close"] = "open"
    fractional: bool = False
    allow_short: bool = False
    max_gross: float = 1.0
    commission_bps: float = 0.0
    commission_fixed: float = 0.0
    slippage_bps: float = 0.0

    def __post_init__(self) -> None:
        checks = [
            (self.cash > 0, "cash", f"cash must be positive, got {self.cash}"),
            (
                self.rebalance in REBALANCE_CHOICES,
                "rebalance",
                f"rebalance must be one of {', '.join(REBALANCE_CHOICES)}, got {self.rebalance!r}",
            ),
            (
                self.drift_band is None or 0 < self.drift_band < 1,
                "drift_band",
                f"drift band must be between 0 and 1 (a weight), got {self.drift_band}",
            ),
            (self.fill in ("open", "close"), "fill", "fill must be open or close"),
            (self.max_gross > 0, "max_gross", "max gross exposure must be positive"),
            (0 <= self.commission_bps < 10_000, "commission", "commission: 0 to 9999 bps"),
            (self.commission_fixed >= 0, "commission_fixed", "fixed commission must be >= 0"),
            (0 <= self.slippage_bps < 10_000, "slippage", "slippage: 0 to 9999 bps"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise InputError(message, param=name)


@dataclass(frozen=True, eq=False)
class Panel:
    """Several symbols' bars on one union time line; NaN where a symbol has no bar."""

    symbols: list[str]
    ts: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    has: np.ndarray[Any, np.dtype[np.bool_]]
    bars: list[Bars] = field(repr=False)

    @classmethod
    def of(cls, bars: Sequence[Bars]) -> Panel:
        if not bars:
            raise InputError("no bars to backtest; check the symbols, timeframe and range")
        names = [b.symbol for b in bars]
        if len(set(names)) != len(names):
            raise InputError(f"a symbol is given twice: {', '.join(names)}", param="symbols")
        for one in bars:
            one.check()
        ts = np.unique(np.concatenate([b.ts for b in bars]))
        shape = (len(ts), len(bars))
        columns = {k: np.full(shape, np.nan) for k in ("open", "high", "low", "close", "volume")}
        has = np.zeros(shape, dtype=bool)
        for j, one in enumerate(bars):
            rows = np.searchsorted(ts, one.ts)
            has[rows, j] = True
            for k, values in columns.items():
                values[rows, j] = getattr(one, k)
        return cls(names, ts, **columns, has=has, bars=list(bars))

    def __len__(self) -> int:
        return len(self.ts)

    def last_close(self) -> FloatArray:
        """The close of each symbol's latest bar at each row (NaN before its first)."""
        return _forward_fill(self.close)


def _forward_fill(values: FloatArray) -> FloatArray:
    rows = np.where(~np.isnan(values), np.arange(len(values))[:, None], 0)
    np.maximum.accumulate(rows, axis=0, out=rows)
    out: FloatArray = values[rows, np.arange(values.shape[1])]
    out[np.isnan(values[0]) & (rows == 0)] = np.nan
    return out


# -- strategies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PortfolioStrategy(Strategy):
    """A strategy over several symbols: target weights per row and symbol."""

    name: ClassVar[str]

    def signals(self, bars: Bars) -> FloatArray:  # pragma: no cover - not a signal strategy
        raise InputError(f"{self.name} is a portfolio strategy; run it with `backtest portfolio`")

    @abstractmethod
    def weights(self, panel: Panel) -> FloatArray:
        """Target weights after each row's close, shape (rows, symbols); a NaN row: no opinion."""


def _available(panel: Panel) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Symbols that have had a bar by each row (a stock stays selectable on a crypto weekend)."""
    return np.asarray(~np.isnan(panel.last_close()))


@dataclass(frozen=True)
class EqualWeight(PortfolioStrategy):
    """Every symbol that has data gets the same weight (bt's ``WeighEqually``)."""

    name: ClassVar[str] = "equal_weight"

    def weights(self, panel: Panel) -> FloatArray:
        live = _available(panel).astype(np.float64)
        count = live.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, live / count, np.nan)


@dataclass(frozen=True)
class InverseVolatility(PortfolioStrategy):
    """Weights proportional to 1 / the standard deviation (ddof 1) of each symbol's bar
    returns over the last ``lookback_days`` calendar days (bt's ``WeighInvVol``)."""

    name: ClassVar[str] = "inverse_volatility"
    lookback_days: int = param(90, "calendar days of returns to measure volatility over")

    def check(self) -> None:
        if self.lookback_days < 2:
            raise InputError("inverse_volatility: lookback_days must be at least 2")

    def weights(self, panel: Panel) -> FloatArray:
        close = panel.close
        rows, n = close.shape
        out = np.full((rows, n), np.nan)
        window = self.lookback_days * US_PER_DAY
        start = np.searchsorted(panel.ts, panel.ts - window, side="left")
        # returns between consecutive bars of each symbol, placed on the later bar's row
        returns = np.full((rows, n), np.nan)
        for j in range(n):
            at = np.flatnonzero(panel.has[:, j])
            if len(at) > 1:
                prices = close[at, j]
                returns[at[1:], j] = prices[1:] / prices[:-1] - 1
        valid = ~np.isnan(returns)
        filled = np.where(valid, returns, 0.0)
        csum = np.vstack([np.zeros(n), np.cumsum(filled, axis=0)])
        csq = np.vstack([np.zeros(n), np.cumsum(filled * filled, axis=0)])
        ccount = np.vstack([np.zeros(n), np.cumsum(valid, axis=0)])
        # the window holds rows start[t]..t; a return on row start[t] uses the price before it,
        # outside the window, so it is left out (bt takes returns of the window's prices)
        lo = np.minimum(start + 1, np.arange(rows) + 1)
        hi = np.arange(rows) + 1
        count = ccount[hi] - ccount[lo]
        mean = (csum[hi] - csum[lo]) / np.maximum(count, 1)
        var = ((csq[hi] - csq[lo]) - count * mean * mean) / np.maximum(count - 1, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            inverse = np.where((count >= 2) & (var > 0), 1.0 / np.sqrt(var), np.nan)
        total = np.nansum(inverse, axis=1, keepdims=True)
        has_any = (~np.isnan(inverse)).any(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(has_any, np.nan_to_num(inverse) / total, np.nan)
        return out


@dataclass(frozen=True)
class MomentumTopN(PortfolioStrategy):
    """Rank symbols by their return over the last ``lookback`` bars and hold the best ``top``
    equally weighted (symbols without enough history are not ranked)."""

    name: ClassVar[str] = "momentum_top_n"
    top: int = param(10, "how many of the best-ranked symbols to hold")
    lookback: int = param(252, "bars of trailing return to rank by")

    def check(self) -> None:
        if self.top < 1 or self.lookback < 1:
            raise InputError("momentum_top_n: top and lookback must be at least 1")

    def weights(self, panel: Panel) -> FloatArray:
        close = panel.last_close()
        rows, n = close.shape
        score = np.full((rows, n), np.nan)
        if rows > self.lookback:
            with np.errstate(invalid="ignore", divide="ignore"):
                score[self.lookback :] = close[self.lookback :] / close[: -self.lookback] - 1
        ranked = np.where(np.isnan(score), -np.inf, score)
        keep = min(self.top, n)
        # argpartition puts the `keep` largest scores (per row) in the last columns
        best = np.argpartition(ranked, n - keep, axis=1)[:, n - keep :]
        chosen = np.zeros((rows, n), dtype=bool)
        np.put_along_axis(chosen, best, True, axis=1)
        chosen &= ~np.isnan(score)
        count = chosen.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, chosen / count, np.nan)


@dataclass(frozen=True)
class FixedMix(PortfolioStrategy):
    """Fixed weights, e.g. ``mix="SPY=0.6,TLT=0.4"`` (a 60/40 portfolio); symbols not named
    get 0. Weights may sum to less than 1 (the rest stays in cash)."""

    name: ClassVar[str] = "fixed_mix"
    mix: str = param("", "SYMBOL=WEIGHT pairs separated by commas")  # type: ignore[arg-type]

    def parsed(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in self.mix.split(","))):
            symbol, _, weight = part.partition("=")
            try:
                out[symbol.strip().upper()] = float(weight)
            except ValueError:
                raise InputError(
                    f"fixed_mix: {part!r} is not SYMBOL=WEIGHT (e.g. SPY=0.6,TLT=0.4)",
                    param="mix",
                ) from None
        if not out:
            raise InputError("fixed_mix needs mix=SYMBOL=WEIGHT,…", param="mix")
        return out

    def check(self) -> None:
        if self.mix:
            self.parsed()

    def weights(self, panel: Panel) -> FloatArray:
        mix = self.parsed()
        unknown = sorted(set(mix) - set(panel.symbols))
        if unknown:
            raise InputError(
                f"fixed_mix names {', '.join(unknown)}, which are not among the symbols "
                f"backtested ({', '.join(panel.symbols)})",
                param="mix",
            )
        row = np.array([mix.get(s, 0.0) for s in panel.symbols])
        live = _available(panel)
        return np.where(live.any(axis=1, keepdims=True), np.where(live, row, 0.0), np.nan)


@dataclass(frozen=True)
class SignalWeights(PortfolioStrategy):
    """A per-symbol signal strategy as a portfolio: each symbol's signal times 1/N."""

    name: ClassVar[str] = "signals"
    strategy: Strategy | None = None

    def weights(self, panel: Panel) -> FloatArray:
        if self.strategy is None:
            raise InputError("signals: no strategy given")
        rows, n = panel.close.shape
        out = np.full((rows, n), np.nan)
        for j, one in enumerate(panel.bars):
            at = np.searchsorted(panel.ts, one.ts)
            out[at, j] = self.strategy.signals(one) / n
        filled = _forward_fill(out)
        return np.where(np.isnan(filled), 0.0, filled)

    def label(self) -> str:
        return self.strategy.label() if self.strategy else self.name


PORTFOLIO_STRATEGIES: dict[str, type[PortfolioStrategy]] = {
    cls.name: cls for cls in (EqualWeight, InverseVolatility, MomentumTopN, FixedMix)
}


def get_portfolio_strategy(
    name: str, params: Mapping[str, object] | None = None
) -> PortfolioStrategy:
    """A built-in portfolio strategy by name, or a signal strategy wrapped as one."""
    cls = PORTFOLIO_STRATEGIES.get(name)
    if cls is not None:
        if cls is FixedMix and params and "mix" in params:
            return FixedMix(mix=str(params["mix"]))
        return cls.from_params(params or {})  # type: ignore[return-value]
    try:
        return SignalWeights(strategy=get_strategy(name, params))
    except InputError as exc:
        if exc.param is not None:
            raise
        raise InputError(
            f"unknown strategy {name!r}; portfolio strategies: "
            f"{', '.join(PORTFOLIO_STRATEGIES)}, or any signal strategy",
            param="strategy",
        ) from None


# -- the simulation --------------------------------------------------------------------------


def decision_rows(ts: IntArray, rebalance: str) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Rows where a scheduled rebalance is decided: every row, or each period's first row."""
    n = len(ts)
    if rebalance in ("bar", "signal") or n == 0:
        return np.ones(n, dtype=bool)
    days = ts // US_PER_DAY
    if rebalance == "daily":
        period = days
    elif rebalance == "weekly":
        period = (days + 3) // 7  # epoch day 0 is a Thursday: weeks start on Monday
    else:
        dates = ts.astype("datetime64[us]").astype("datetime64[M]")
        period = dates.astype(np.int64)
    first = np.ones(n, dtype=bool)
    first[1:] = period[1:] != period[:-1]
    return first


@numba.njit(cache=True)
def _simulate(
    fill_price: FloatArray,
    close: FloatArray,
    targets: FloatArray,
    decide: np.ndarray[Any, np.dtype[np.bool_]],
    only_changed: bool,
    drift_band: float,
    fill_next: bool,
    fractional: bool,
    cash0: float,
    fee_bps: float,
    fee_fixed: float,
    slip: float,
) -> tuple[FloatArray, FloatArray, IntArray, IntArray, FloatArray, FloatArray, FloatArray]:
    rows, n = close.shape
    units = np.zeros(n)
    last = np.full(n, np.nan)
    cash = cash0
    equity = np.empty(rows)
    held = np.empty((rows, n))
    goal = np.full(n, np.nan)  # the target weight of the last decision, per symbol
    pending = np.zeros(n, dtype=np.bool_)
    pending_w = np.zeros(n)
    cap = rows * n if rows * n < 4_000_000 else 4_000_000
    f_row = np.empty(cap, dtype=np.int64)
    f_sym = np.empty(cap, dtype=np.int64)
    f_qty = np.empty(cap)
    f_price = np.empty(cap)
    f_fee = np.empty(cap)
    nf = 0
    queued = np.zeros(n, dtype=np.bool_)
    queued_w = np.zeros(n)
    for t in range(rows):
        # 1. orders decided at the previous row (open fills) become pending now
        if fill_next:
            for j in range(n):
                if queued[j]:
                    pending[j] = True
                    pending_w[j] = queued_w[j]
                    queued[j] = False
        # 2. decisions at this row (close fills act now, open fills queue for the next row)
        want = decide[t]
        if drift_band > 0 and not want:
            value = cash
            for j in range(n):
                if units[j] != 0:
                    value += units[j] * last[j]
            if value > 0:
                for j in range(n):
                    if not np.isnan(goal[j]) and not np.isnan(last[j]):
                        price_j = close[t, j] if not np.isnan(close[t, j]) else last[j]
                        w = units[j] * price_j / value
                        if abs(w - goal[j]) > drift_band:
                            want = True
                            break
        if want:
            row_ok = False
            for j in range(n):
                if not np.isnan(targets[t, j]):
                    row_ok = True
                    break
            if row_ok or (drift_band > 0 and not decide[t]):
                for j in range(n):
                    w = targets[t, j] if decide[t] else goal[j]
                    if np.isnan(w):
                        w = 0.0 if decide[t] else goal[j]
                    if np.isnan(w):
                        continue
                    if only_changed and decide[t] and not np.isnan(goal[j]) and w == goal[j]:
                        continue
                    goal[j] = w
                    if fill_next:
                        queued[j] = True
                        queued_w[j] = w
                    else:
                        pending[j] = True
                        pending_w[j] = w
        # 3. fill pending orders of symbols that have a bar on this row
        any_fill = False
        for j in range(n):
            if pending[j] and not np.isnan(fill_price[t, j]):
                any_fill = True
                break
        if any_fill:
            value = cash
            for j in range(n):
                if units[j] != 0:
                    mark = fill_price[t, j] if not np.isnan(fill_price[t, j]) else last[j]
                    value += units[j] * mark
            delta = np.zeros(n)
            for j in range(n):
                if pending[j] and not np.isnan(fill_price[t, j]):
                    want_units = pending_w[j] * value / fill_price[t, j]
                    if not fractional:
                        want_units = np.trunc(want_units + 1e-9 * np.sign(want_units))
                    delta[j] = want_units - units[j]
            # sells (and short sales) first
            for j in range(n):
                if delta[j] < 0:
                    price = fill_price[t, j] * (1 - slip)
                    gross = -delta[j] * price
                    fee = gross * fee_bps + fee_fixed
                    cash += gross - fee
                    units[j] += delta[j]
                    if nf < cap:
                        f_row[nf] = t
                        f_sym[nf] = j
                        f_qty[nf] = delta[j]
                        f_price[nf] = price
                        f_fee[nf] = fee
                        nf += 1
            cost = 0.0
            for j in range(n):
                if delta[j] > 0:
                    cost += delta[j] * fill_price[t, j] * (1 + slip) * (1 + fee_bps) + fee_fixed
            scale = 1.0
            if cost > cash and cost > 0:
                scale = max(cash, 0.0) / cost
            for j in range(n):
                if delta[j] > 0:
                    qty = delta[j] * scale
                    if not fractional:
                        qty = np.floor(qty + 1e-9)
                    if qty <= 0:
                        continue
                    price = fill_price[t, j] * (1 + slip)
                    fee = qty * price * fee_bps + fee_fixed
                    if qty * price + fee > cash + 1e-9 * abs(cash):
                        if not fractional:
                            qty -= 1
                            fee = qty * price * fee_bps + fee_fixed
                        else:
                            qty = max(cash - fee_fixed, 0.0) / (price * (1 + fee_bps))
                            fee = qty * price * fee_bps + fee_fixed
                        if qty <= 0:
                            continue
                    cash -= qty * price + fee
                    units[j] += qty
                    if nf < cap:
                        f_row[nf] = t
                        f_sym[nf] = j
                        f_qty[nf] = qty
                        f_price[nf] = price
                        f_fee[nf] = fee
                        nf += 1
            for j in range(n):
                if pending[j] and not np.isnan(fill_price[t, j]):
                    pending[j] = False
        # 4. mark to the close
        value = cash
        for j in range(n):
            if not np.isnan(close[t, j]):
                last[j] = close[t, j]
            if units[j] != 0:
                value += units[j] * last[j]
            held[t, j] = units[j]
        equity[t] = value
    return equity, held, f_row[:nf], f_sym[:nf], f_qty[:nf], f_price[:nf], f_fee[:nf]


@dataclass
class PortfolioResult:
    """What a portfolio backtest produced."""

    strategy: PortfolioStrategy
    config: PortfolioConfig
    timeframe: str
    panel: Panel
    equity: FloatArray
    units: FloatArray
    fills: pa.Table
    stats: dict[str, Any]
    id: str | None = None

    @property
    def symbols(self) -> list[str]:
        return self.panel.symbols

    @property
    def ts(self) -> IntArray:
        return self.panel.ts

    def weights(self) -> FloatArray:
        """Each symbol's share of the portfolio value at each row's close."""
        value = self.units * np.nan_to_num(self.panel.last_close())
        with np.errstate(invalid="ignore", divide="ignore"):
            return value / self.equity[:, None]

    def equity_table(self) -> pa.Table:
        peak = np.maximum.accumulate(self.equity)
        return pa.table(
            {
                "ts": pa.array(self.ts, pa.timestamp("us", tz="UTC")),
                "equity": self.equity,
                "drawdown": self.equity / peak - 1.0,
            }
        )

    def positions_table(self) -> pa.Table:
        """Long format: ts, symbol, units, weight for every row and symbol."""
        rows, n = self.units.shape
        weights = self.weights()
        return pa.table(
            {
                "ts": pa.array(np.repeat(self.ts, n), pa.timestamp("us", tz="UTC")),
                "symbol": pa.array(np.tile(np.array(self.symbols, dtype=object), rows)),
                "units": self.units.reshape(-1),
                "weight": weights.reshape(-1),
            }
        )


def run_portfolio(
    bars: Sequence[Bars] | Panel,
    strategy: PortfolioStrategy,
    config: PortfolioConfig | None = None,
    timeframe: str = "",
) -> PortfolioResult:
    """Backtest a portfolio strategy on several symbols with one cash account."""
    config = config or PortfolioConfig()
    panel = bars if isinstance(bars, Panel) else Panel.of(bars)
    if len(panel) < 2:
        raise InputError("a portfolio backtest needs at least 2 bars", param="start")
    targets = np.array(strategy.weights(panel), dtype=np.float64)
    if targets.shape != panel.close.shape:
        raise ValueError(f"weights have shape {targets.shape}, expected {panel.close.shape}")
    if isinstance(strategy, SignalWeights) and not config.allow_short:
        targets = np.maximum(targets, 0.0)  # as the single-symbol engine: -1 means flat
    targets = _limit(targets, config)
    decide = decision_rows(panel.ts, config.rebalance)
    fill_price = panel.open if config.fill == "open" else panel.close
    equity, units, row, sym, qty, price, fee = _simulate(
        fill_price,
        panel.close,
        targets,
        decide,
        config.rebalance == "signal",
        config.drift_band or 0.0,
        config.fill == "open",
        config.fractional,
        float(config.cash),
        config.commission_bps / 1e4,
        config.commission_fixed,
        config.slippage_bps / 1e4,
    )
    fills = pa.table(
        {
            "ts": pa.array(panel.ts[row], pa.timestamp("us", tz="UTC")),
            "symbol": pa.array(np.array(panel.symbols, dtype=object)[sym], pa.string()),
            "units": qty,
            "price": price,
            "value": qty * price,
            "fees": fee,
        }
    )
    stats = portfolio_stats(panel, equity, units, fills, config.cash)
    return PortfolioResult(strategy, config, timeframe, panel, equity, units, fills, stats)


def _limit(targets: FloatArray, config: PortfolioConfig) -> FloatArray:
    if not config.allow_short and np.nanmin(targets, initial=0.0) < -1e-12:
        raise InputError(
            "the strategy asks for short positions; allow them with --allow-short",
            param="allow_short",
        )
    gross = np.nansum(np.abs(targets), axis=1, keepdims=True)
    over = gross > config.max_gross + 1e-12
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(over, targets * (config.max_gross / gross), targets)


PORTFOLIO_STAT_LABELS: dict[str, str] = {
    "start": "Start",
    "end": "End",
    "duration_days": "Duration (days)",
    "bars": "Bars",
    "symbols": "Symbols",
    "initial_cash": "Initial cash",
    "final_equity": "Final equity",
    "equity_peak": "Equity peak",
    "total_return_pct": "Total return (%)",
    "buy_hold_return_pct": "Buy & hold return (%, equal weight)",
    "cagr_pct": "CAGR (%)",
    "volatility_ann_pct": "Annual volatility (%)",
    "sharpe": "Sharpe ratio",
    "sortino": "Sortino ratio",
    "calmar": "Calmar ratio",
    "max_drawdown_pct": "Max drawdown (%)",
    "max_drawdown_days": "Max drawdown duration (days)",
    "exposure_pct": "Exposure (%, mean gross)",
    "turnover_pct": "Turnover (%, annual, one-way)",
    "fills": "Fills",
    "fees": "Fees",
}


def portfolio_stats(
    panel: Panel, equity: FloatArray, units: FloatArray, fills: pa.Table, cash: float
) -> dict[str, Any]:
    """The statistics of :data:`PORTFOLIO_STAT_LABELS`, JSON-ready."""
    ts = panel.ts
    years = (float(ts[-1]) - float(ts[0])) / US_PER_YEAR
    marks = np.nan_to_num(panel.last_close())
    gross = np.abs(units * marks).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        exposure = float(np.mean(np.where(equity > 0, gross / equity, 0.0)))
    traded = float(np.abs(fills.column("value").to_numpy()).sum()) if fills.num_rows else 0.0
    mean_equity = float(np.mean(equity))
    turnover = traded / 2 / mean_equity / years if years > 0 and mean_equity > 0 else None
    first = np.array([b.close[0] for b in panel.bars])
    final = np.array([b.close[-1] for b in panel.bars])
    out: dict[str, Any] = {
        "start": iso_us(ts[0]),
        "end": iso_us(ts[-1]),
        "duration_days": (float(ts[-1]) - float(ts[0])) / US_PER_DAY,
        "bars": len(ts),
        "symbols": len(panel.symbols),
        "initial_cash": cash,
        "final_equity": float(equity[-1]),
        "equity_peak": float(equity.max()),
        "total_return_pct": (float(equity[-1]) / cash - 1) * 100,
        "buy_hold_return_pct": float(np.mean(final / first - 1)) * 100,
        "exposure_pct": exposure * 100,
        "turnover_pct": None if turnover is None else turnover * 100,
        "fills": fills.num_rows,
        "fees": float(np.sum(fills.column("fees").to_numpy())) if fills.num_rows else 0.0,
    }
    out.update(risk_stats(equity, cash, years, ts))
    return {key: _json(out.get(key)) for key in PORTFOLIO_STAT_LABELS}


def _json(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if np.isfinite(number) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def parse_params(strategy: str, pairs: Sequence[str]) -> dict[str, Scalar | str]:
    """``k=v`` pairs of the command line (a fixed mix keeps its text)."""
    out: dict[str, Scalar | str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--param {pair!r}: use NAME=VALUE", param="param")
        out[key.strip()] = value.strip()
    cls = PORTFOLIO_STRATEGIES.get(strategy)
    if cls is not None and cls is not FixedMix:
        known = {p.name: p for p in cls.parameters()}
        return {k: coerce(known[k], v) if k in known else v for k, v in out.items()}
    return out


__all__ = [
    "REBALANCE_CHOICES",
    "EqualWeight",
    "FixedMix",
    "InverseVolatility",
    "MomentumTopN",
    "Panel",
    "PortfolioConfig",
    "PortfolioResult",
    "PortfolioStrategy",
    "SignalWeights",
    "decision_rows",
    "get_portfolio_strategy",
    "run_portfolio",
]
