"""A self-contained HTML report of a backtest: statistics, equity, drawdown, prices with trades.

The charts are inline SVG drawn here (no JavaScript, no fonts or scripts from
the network), so the file opens offline and can be mailed around. Long
series are decimated to a few thousand points that keep every bucket's
highs and lows, so a million bars make a report of a few hundred kilobytes.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from marketlake.backtest.data import FloatArray, IntArray
from marketlake.backtest.engine import BacktestResult
from marketlake.backtest.stats import STAT_LABELS, format_stat, iso_us

if TYPE_CHECKING:
    from marketlake.backtest.walkforward import WalkForwardResult

WIDTH, LEFT, RIGHT, TOP, BOTTOM = 960, 78, 12, 26, 24
MAX_POINTS = 3_000
MAX_MARKERS = 1_000
MAX_TRADE_ROWS = 500
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#1f2933}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:3px 10px;border-bottom:1px solid #e4e7eb;text-align:right}
td:first-child,th:first-child{text-align:left}
.stats{columns:2;column-gap:40px}.stats div{display:flex;justify-content:space-between;
border-bottom:1px solid #e4e7eb;padding:3px 0;break-inside:avoid}
svg{display:block;background:#fafbfc;border:1px solid #e4e7eb;margin:6px 0}
svg text{font:11px system-ui,sans-serif;fill:#52606d}.note{color:#7b8794}
"""


def decimate(values: FloatArray, limit: int) -> IntArray:
    """Indices of at most about ``limit`` points: each bucket's first, lowest and highest one."""
    n = len(values)
    if n <= limit:
        return np.arange(n)
    buckets = max(limit // 3, 1)
    size = -(-n // buckets)
    padded = np.empty(size * buckets)
    padded[:n] = values
    padded[n:] = values[-1]
    grid = padded.reshape(buckets, size)
    offsets = np.arange(buckets) * size
    picks = np.concatenate(
        [offsets, offsets + grid.argmin(axis=1), offsets + grid.argmax(axis=1), [n - 1]]
    )
    return np.unique(np.minimum(picks, n - 1))


def write_report(result: BacktestResult, path: str | Path) -> Path:
    """Write the HTML report of ``result`` to ``path``; return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_html(result), encoding="utf-8")
    return target


def render_html(result: BacktestResult) -> str:
    """The whole report as one HTML document."""
    title = (
        f"{result.strategy.label()} on {', '.join(result.symbols)}"
        f"{' ' + result.timeframe if result.timeframe else ''}"
    )
    equity = result.equity
    drawdown = (equity / np.maximum.accumulate(equity) - 1) * 100
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>Backtest: {_e(title)}</h1>",
        _config(result),
        "<h2>Statistics</h2><div class='stats'>",
        *(
            f"<div><span>{_e(label)}</span><b>{_e(format_stat(key, result.stats[key]))}</b></div>"
            for key, label in STAT_LABELS.items()
        ),
        "</div><h2>Equity</h2>",
        chart(result.ts, equity, color="#2563eb", height=240),
        "<h2>Drawdown (%)</h2>",
        chart(result.ts, drawdown, color="#dc2626", height=140, fill=True),
    ]
    for run in result.runs[:8]:
        parts.append(f"<h2>{_e(run.bars.symbol)} close with trades</h2>")
        parts.append(_price_chart(result, run.bars.symbol))
    parts.append(_trade_table(result))
    parts.append("</body></html>")
    return "\n".join(parts)


class _Frame:
    """Maps times and values to SVG coordinates of one chart."""

    def __init__(self, ts: IntArray, values: FloatArray, height: int) -> None:
        self.t0, self.t1 = float(ts[0]), float(max(ts[-1], ts[0] + 1))
        lo, hi = float(np.min(values)), float(np.max(values))
        if hi - lo < 1e-12:
            lo, hi = lo - 1, hi + 1
        margin = (hi - lo) * 0.04
        self.lo, self.hi, self.height = lo - margin, hi + margin, height

    def x(self, t: Any) -> FloatArray:
        width = WIDTH - LEFT - RIGHT
        return LEFT + (np.asarray(t, dtype=np.float64) - self.t0) / (self.t1 - self.t0) * width

    def y(self, v: Any) -> FloatArray:
        plot = self.height - TOP - BOTTOM
        return TOP + (self.hi - np.asarray(v, dtype=np.float64)) / (self.hi - self.lo) * plot

    def axes(self) -> list[str]:
        out = []
        for v in np.linspace(self.lo, self.hi, 5):
            y = float(self.y(v))
            out.append(
                f"<line x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{y:.1f}' y2='{y:.1f}' "
                f"stroke='#e4e7eb'/><text x='{LEFT - 6}' y='{y + 4:.1f}' "
                f"text-anchor='end'>{_number(float(v))}</text>"
            )
        with_time = (self.t1 - self.t0) < 5 * 86_400e6
        for t in np.linspace(self.t0, self.t1, 6):
            label = iso_us(int(t))[: 16 if with_time else 10].replace("T", " ")
            out.append(
                f"<text x='{float(self.x(t)):.1f}' y='{self.height - 6}' "
                f"text-anchor='middle'>{label}</text>"
            )
        return out


def chart(
    ts: IntArray,
    values: FloatArray,
    *,
    color: str,
    height: int,
    fill: bool = False,
    markers: str = "",
) -> str:
    """One line chart as inline SVG; ``markers`` is extra SVG drawn on top."""
    frame = _Frame(ts, values, height)
    keep = decimate(values, MAX_POINTS)
    xs, ys = frame.x(ts[keep]), frame.y(values[keep])
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs.tolist(), ys.tolist(), strict=True))
    body = [
        f"<svg width='{WIDTH}' height='{height}' viewBox='0 0 {WIDTH} {height}'>",
        *frame.axes(),
    ]
    if fill:
        base = float(frame.y(0.0))
        body.append(
            f"<polygon points='{xs[0]:.1f},{base:.1f} {points} {xs[-1]:.1f},{base:.1f}'"
            f" fill='{color}' fill-opacity='0.25' stroke='none'/>"
        )
    body.append(f"<polyline points='{points}' fill='none' stroke='{color}' stroke-width='1.2'/>")
    body.append(markers)
    body.append("</svg>")
    return "".join(body)


def _price_chart(result: BacktestResult, symbol: str) -> str:
    run = next(r for r in result.runs if r.bars.symbol == symbol)
    bars, trades = run.bars, run.trades
    frame = _Frame(bars.ts, bars.close, 260)
    shown = slice(max(0, len(trades["size"]) - MAX_MARKERS), None)
    entries = trades["entry_bar"][shown]
    exits = trades["exit_bar"][shown]
    sides = trades["side"][shown]
    closed = exits < len(bars)
    ex, ey = frame.x(bars.ts[entries]), frame.y(trades["entry_price"][shown])
    marks = [
        f"<path d='M{x:.1f},{y + (6 if s > 0 else -6):.1f} l-4,{-7 if s > 0 else 7} h8 z' "
        f"fill='{'#16a34a' if s > 0 else '#dc2626'}'/>"
        for x, y, s in zip(ex.tolist(), ey.tolist(), sides.tolist(), strict=True)
    ]
    xx = frame.x(bars.ts[exits[closed]])
    xy = frame.y(trades["exit_price"][shown][closed])
    marks += [
        f"<circle cx='{x:.1f}' cy='{y:.1f}' r='2.5' fill='none' stroke='#111827'/>"
        for x, y in zip(xx.tolist(), xy.tolist(), strict=True)
    ]
    note = ""
    if len(trades["size"]) > MAX_MARKERS:
        note = (
            f"<p class='note'>markers for the last {MAX_MARKERS} of {len(trades['size'])} "
            "trades</p>"
        )
    legend = "<p class='note'>▲ long entry · ▼ short entry · ○ exit</p>"
    return (
        chart(bars.ts, bars.close, color="#374151", height=260, markers="".join(marks))
        + legend
        + note
    )


def _trade_table(result: BacktestResult) -> str:
    trades = result.trades
    head = (
        "symbol",
        "side",
        "size",
        "entry_time",
        "entry_price",
        "exit_time",
        "exit_price",
        "pnl",
        "return_pct",
        "exit_reason",
    )
    rows = trades.slice(0, MAX_TRADE_ROWS).select(list(head)).to_pylist()
    out = [
        f"<h2>Trades ({trades.num_rows})</h2><table><tr>",
        *(f"<th>{_e(h)}</th>" for h in head),
        "</tr>",
    ]
    out.extend(
        "<tr>" + "".join(f"<td>{_e(_cell(row[h]))}</td>" for h in head) + "</tr>" for row in rows
    )
    out.append("</table>")
    if trades.num_rows > MAX_TRADE_ROWS:
        out.append(
            f"<p class='note'>the first {MAX_TRADE_ROWS} of {trades.num_rows} trades; "
            "`marketlake backtest run --json` lists them all</p>"
        )
    return "".join(out)


def _config(result: BacktestResult) -> str:
    items = {"strategy": result.strategy.label(), **result.config.as_dict()}
    return (
        "<p class='note'>"
        + " · ".join(f"{_e(k)}: {_e(str(v))}" for k, v in items.items() if v is not None)
        + "</p>"
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1 else f"{value:,.2f}"
    if hasattr(value, "isoformat"):
        return str(value.isoformat()).replace("+00:00", "Z")
    return str(value)


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:,.2f}M"
    if magnitude >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def render_walk_forward_html(result: WalkForwardResult) -> str:
    """The report of a walk-forward optimisation: stitched OOS equity, the windows with
    their chosen parameters and IS vs OOS statistics, and the parameter-stability table."""
    title = f"walk-forward {result.strategy}{' ' + result.timeframe if result.timeframe else ''}"
    drawdown = (result.equity / np.maximum.accumulate(result.equity) - 1) * 100
    windows = result.windows_table().to_pylist()
    stability = result.stability()
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
        f"<p>objective: <b>{_e(result.objective)}</b>; {len(result.windows)} windows; "
        "every figure below the stitched curve is out of sample unless marked IS.</p>",
        "<h2>Stitched out-of-sample statistics</h2><div class='stats'>",
        *(
            f"<div><span>{_e(str(key))}</span><b>{_e(_cell(value))}</b></div>"
            for key, value in result.stats.items()
        ),
        "</div><h2>Out-of-sample equity</h2>",
        chart(result.ts, result.equity, color="#2563eb", height=240),
        "<h2>Drawdown (%)</h2>",
        chart(result.ts, drawdown, color="#dc2626", height=140, fill=True),
        "<h2>Windows</h2>",
        _table(windows),
        "<h2>Parameter stability</h2>",
        _table(stability),
        "</body></html>",
    ]
    return "\n".join(parts)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{_e(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(_cell(v))}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(html: str, path: str | Path) -> Path:
    """Write a rendered report; the folder must exist."""
    target = Path(path)
    target.write_text(html, encoding="utf-8")
    return target
