"""Backtest statistics from an equity curve and a trade list.

Definitions (risk-free rate 0):

* Returns are per bar, ``equity[t] / equity[t-1] - 1``; they are annualised
  with the observed number of bars per year (bars - 1 over the span in years
  of 365.25 days), so stock sessions, 24/7 crypto and any timeframe need no
  calendar guess.
* Sharpe: mean / standard deviation (ddof 1) × √(bars per year). Sortino: mean
  / √mean(min(r, 0)²) × √(bars per year). Calmar: CAGR / |max drawdown|.
* CAGR: (final / initial) ^ (1 / years) - 1 over the span from first to last bar.
* Max drawdown: the lowest equity / running peak - 1. Its duration: the
  longest time from a peak until equity is back at it (or until the end).
* Trade figures count closed trades only: win rate (P&L > 0), profit factor
  (gross profit / gross loss), expectancy (mean P&L per trade, in cash) and
  the mean, best and worst trade return (net of fees).
* Exposure: the share of bars that end with a position (the mean over symbols).
* Buy & hold: first to last close (the mean over symbols).

A figure that is undefined (no trades, no losing trade, a flat curve) is None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from marketlake.backtest.data import FloatArray, IntArray
from marketlake.schema import from_epoch_us

if TYPE_CHECKING:
    from marketlake.backtest.engine import SymbolRun

US_PER_DAY = 86_400 * 1_000_000
US_PER_YEAR = 365.25 * US_PER_DAY

STAT_LABELS: dict[str, str] = {
    "start": "Start",
    "end": "End",
    "duration_days": "Duration (days)",
    "bars": "Bars",
    "initial_cash": "Initial cash",
    "final_equity": "Final equity",
    "equity_peak": "Equity peak",
    "total_return_pct": "Total return (%)",
    "buy_hold_return_pct": "Buy & hold return (%)",
    "cagr_pct": "CAGR (%)",
    "volatility_ann_pct": "Annual volatility (%)",
    "sharpe": "Sharpe ratio",
    "sortino": "Sortino ratio",
    "calmar": "Calmar ratio",
    "max_drawdown_pct": "Max drawdown (%)",
    "max_drawdown_days": "Max drawdown duration (days)",
    "exposure_pct": "Exposure (%)",
    "trades": "Trades",
    "win_rate_pct": "Win rate (%)",
    "profit_factor": "Profit factor",
    "expectancy": "Expectancy (per trade)",
    "avg_trade_pct": "Avg trade (%)",
    "best_trade_pct": "Best trade (%)",
    "worst_trade_pct": "Worst trade (%)",
    "avg_trade_days": "Avg trade duration (days)",
    "fees": "Fees",
    "open_trades": "Open trades",
}


def compute_stats(
    ts: IntArray, equity: FloatArray, initial_cash: float, trades: pa.Table, runs: list[SymbolRun]
) -> dict[str, Any]:
    """Every statistic of :data:`STAT_LABELS`, JSON-ready (floats, ints, strings, None)."""
    years = (float(ts[-1]) - float(ts[0])) / US_PER_YEAR
    closed = pc.not_equal(trades.column("exit_reason"), "open")
    done = trades.filter(closed)
    out: dict[str, Any] = {
        "start": iso_us(ts[0]),
        "end": iso_us(ts[-1]),
        "duration_days": (float(ts[-1]) - float(ts[0])) / US_PER_DAY,
        "bars": len(ts),
        "initial_cash": initial_cash,
        "final_equity": float(equity[-1]),
        "equity_peak": float(equity.max()),
        "total_return_pct": (float(equity[-1]) / initial_cash - 1) * 100,
        "buy_hold_return_pct": float(
            np.mean([r.bars.close[-1] / r.bars.close[0] - 1 for r in runs])
        )
        * 100,
    }
    out.update(risk_stats(equity, initial_cash, years, ts))
    out["exposure_pct"] = float(np.mean([r.held.mean() for r in runs])) * 100
    out.update(_trade_stats(done))
    out["fees"] = float(pc.sum(trades.column("fees")).as_py() or 0.0)
    out["open_trades"] = trades.num_rows - done.num_rows
    return {key: _clean(out.get(key)) for key in STAT_LABELS}


def risk_stats(equity: FloatArray, initial: float, years: float, ts: IntArray) -> dict[str, Any]:
    final = float(equity[-1])
    cagr = ((final / initial) ** (1 / years) - 1 if final > 0 else -1.0) if years > 0 else None
    # one scratch array serves as running peak, drawdown and returns in turn: on a
    # million bars each fresh array costs more in page faults than its arithmetic
    work = np.maximum.accumulate(equity)
    np.divide(equity, work, out=work)
    work -= 1.0
    max_dd = float(work.min())
    out: dict[str, Any] = {
        "cagr_pct": None if cagr is None else cagr * 100,
        "volatility_ann_pct": None,
        "sharpe": None,
        "sortino": None,
        "calmar": cagr / -max_dd if cagr is not None and max_dd < 0 else None,
        "max_drawdown_pct": max_dd * 100,
        "max_drawdown_days": _longest_drawdown(work, ts) / US_PER_DAY,
    }
    if len(equity) >= 3 and years > 0:
        out.update(_ratios(equity, years, work[1:]))
    return out


def _ratios(equity: FloatArray, years: float, scratch: FloatArray) -> dict[str, float | None]:
    """Annualised volatility, Sharpe and Sortino of the per-bar returns (into ``scratch``)."""
    returns = np.subtract(equity[1:], equity[:-1], out=scratch)
    if equity[:-1].min() > 0:
        returns /= equity[:-1]
    else:  # ruined: no returns after equity reached zero
        np.divide(returns, equity[:-1], out=returns, where=equity[:-1] > 0)
        returns[equity[:-1] <= 0] = 0.0
    n = len(returns)
    mean = float(returns.sum()) / n
    # sums of squares by einsum: no temporary array, and no BLAS threads as np.dot would use
    total = float(np.einsum("i,i->", returns, returns))
    std = float(np.sqrt(max(total - n * mean * mean, 0.0) / (n - 1)))
    losses = np.minimum(returns, 0.0, out=returns)
    downside = float(np.sqrt(float(np.einsum("i,i->", losses, losses)) / n))
    scale = float(np.sqrt(n / years))
    return {
        "volatility_ann_pct": std * scale * 100,
        "sharpe": mean / std * scale if std > 0 else None,
        "sortino": mean / downside * scale if downside > 0 else None,
    }


def _longest_drawdown(drawdown: FloatArray, ts: IntArray) -> float:
    """Microseconds of the longest stretch from a peak to its recovery (or to the end)."""
    peaks = np.flatnonzero(drawdown >= 0)
    if len(peaks) == len(drawdown):
        return 0.0
    longest = 0.0
    gaps = np.flatnonzero(np.diff(peaks) > 1)
    if len(gaps):
        longest = float((ts[peaks[gaps + 1]] - ts[peaks[gaps]]).max())
    if peaks[-1] < len(ts) - 1:
        longest = max(longest, float(ts[-1] - ts[peaks[-1]]))
    return longest


def _trade_stats(done: pa.Table) -> dict[str, Any]:
    pnl = done.column("pnl").to_numpy()
    ret = done.column("return_pct").to_numpy()
    out: dict[str, Any] = {"trades": len(pnl)}
    if not len(pnl):
        return out
    losses = float(-pnl[pnl < 0].sum())
    out.update(
        {
            "win_rate_pct": float((pnl > 0).mean()) * 100,
            "profit_factor": float(pnl[pnl > 0].sum()) / losses if losses > 0 else None,
            "expectancy": float(pnl.mean()),
            "avg_trade_pct": float(ret.mean()),
            "best_trade_pct": float(ret.max()),
            "worst_trade_pct": float(ret.min()),
            "avg_trade_days": float(done.column("duration_s").to_numpy().mean()) / 86_400,
        }
    )
    return out


def iso_us(us: np.integer[Any] | int) -> str:
    """ISO 8601 UTC text of epoch microseconds, ``Z``-suffixed."""
    return from_epoch_us(int(us)).isoformat().replace("+00:00", "Z")


def _clean(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def format_stat(key: str, value: Any) -> str:
    """A statistic as people read it: 2 decimals for money and percentages, 3 for ratios."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value.replace("T00:00:00Z", "")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if key in ("sharpe", "sortino", "calmar", "profit_factor"):
        return f"{value:,.3f}"
    if key.endswith("_days"):
        return f"{value:,.1f}"
    return f"{value:,.2f}"
