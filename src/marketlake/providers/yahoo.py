"""Yahoo Finance on the chart API: ``GET /v8/finance/chart/{symbol}``.

One answer holds ``meta`` (currency, exchange, ``exchangeTimezoneName``), a
``timestamp`` array of bar open instants (epoch seconds), parallel quote arrays
under ``indicators.quote[0]`` that may hold ``null`` entries, and ``events``
with ``dividends`` and ``splits`` keyed by their ex-date instant.

What the provider does with it:

* **Range limits.** Yahoo keeps 1m bars for 30 days and serves at most 7 days
  per request, other intraday bars for 60 days, 1h bars for 730 days. Longer
  ranges are split into requests; a start beyond the history is an input error
  that states the limit.
* **Nulls.** Rows with a null price or volume are dropped and counted.
* **Labels.** Daily, weekly and monthly bars arrive at the session's open
  instant; they become the trading date (in the exchange timezone) at 00:00 UTC.
* **Splits.** Yahoo's prices, volumes and dividends are adjusted for every split
  up to today. The store keeps bars as traded, so the provider reads the splits
  from the bar to today (one small ``interval=1mo`` request, sent alongside the
  bars' request, when the range ends in the past) and undoes them. Splits and
  dividends are kept as corporate actions; :mod:`marketlake.timeseries.adjust` adjusts on read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from marketlake.errors import InputError, MarketLakeError, ProviderError, SymbolNotFoundError
from marketlake.providers.base import session_labels
from marketlake.providers.http import HttpProvider, Params
from marketlake.schema import BAR_SCHEMA, TS_TYPE, Instrument, Timeframe, to_epoch_us
from marketlake.timeseries.adjust import ACTION_SCHEMA, adjustment_factors, cutoff

_INTERVALS = {
    "1m": "1m",
    "5m": "5m",
    "15m": "15m",
    "30m": "30m",
    "1h": "60m",
    "1d": "1d",
    "1w": "1wk",
    "1mo": "1mo",
}
_ASSET_CLASSES = {
    "EQUITY": "stock",
    "ETF": "etf",
    "MUTUALFUND": "etf",
    "INDEX": "index",
    "CRYPTOCURRENCY": "crypto",
    "CURRENCY": "fx",
    "FUTURE": "future",
}
_QUOTE_FIELDS = ("open", "high", "low", "close", "volume")
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) MarketLake/0.1 (+https://github.com/marketlake)"


@dataclass(frozen=True, slots=True)
class RangeLimit:
    """How far back Yahoo keeps a timeframe and how much one request may span."""

    history: timedelta | None
    per_request: timedelta | None


LIMITS = {
    "1m": RangeLimit(timedelta(days=30), timedelta(days=7)),
    "5m": RangeLimit(timedelta(days=60), timedelta(days=60)),
    "15m": RangeLimit(timedelta(days=60), timedelta(days=60)),
    "30m": RangeLimit(timedelta(days=60), timedelta(days=60)),
    "1h": RangeLimit(timedelta(days=730), timedelta(days=365)),
}
_NO_LIMIT = RangeLimit(None, None)


@dataclass(frozen=True, slots=True)
class _Chart:
    """One parsed chart answer: bars at their true instants, the meta, dropped rows, events."""

    bars: pa.Table
    meta: dict[str, Any]
    dropped: int
    events: dict[str, Any]


class YahooProvider(HttpProvider):
    """Bars, splits and dividends from Yahoo's chart API (or a mirror at MARKETLAKE_YAHOO_URL)."""

    name: ClassVar[str] = "yahoo"
    timeframes: ClassVar[tuple[str, ...]] = tuple(_INTERVALS)
    requests_per_minute: ClassVar[int] = 120
    base_url_setting: ClassVar[str] = "yahoo_url"

    async def fetch_bars(
        self, symbol: str, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> AsyncGenerator[pa.Table, None]:
        tf = self.check_request(timeframe, start, end)
        symbol = symbol.upper()
        now = self.clock()
        limit = LIMITS.get(str(tf), _NO_LIMIT)
        # a daily bar's open instant may precede its date at 00:00 UTC (Sydney opens at 23:00 UTC)
        lo = start if tf.is_intraday else start - timedelta(days=1)
        chunks = _chunks(lo, end, limit.per_request)
        later: asyncio.Future[_Chart] | None = None
        if len(chunks) > 1 or end < now - timedelta(days=1):  # splits from the bars to today,
            later = asyncio.ensure_future(self._chart(symbol, "1mo", lo, now))  # meanwhile
        try:
            async for table in self._pages(symbol, tf, chunks, later, start, end):
                yield table
        finally:
            if later is not None:  # not needed after all (or failed before it was awaited)
                later.cancel()
                with contextlib.suppress(asyncio.CancelledError, MarketLakeError):
                    await later

    async def _pages(
        self,
        symbol: str,
        tf: Timeframe,
        chunks: list[tuple[datetime, datetime]],
        later: asyncio.Future[_Chart] | None,
        start: datetime,
        end: datetime,
    ) -> AsyncGenerator[pa.Table, None]:
        """The bars of each request of ``chunks``, with the splits of ``later`` if any."""
        for chunk_start, chunk_end in chunks:
            chart = await self._chart(symbol, _INTERVALS[str(tf)], chunk_start, chunk_end)
            self.note_dropped(symbol, chart.dropped)
            full = await later if later is not None else chart
            table = _canonical(symbol, tf, chart, full.events)
            self._actions[symbol] = [_parse_events(full.events, symbol, _zone(full.meta))]
            ts = table.column("ts").cast(pa.int64())
            inside = pc.and_(
                pc.greater_equal(ts, to_epoch_us(start)), pc.less(ts, to_epoch_us(end))
            )
            table = table.filter(inside)
            if table.num_rows:
                yield table

    def headers(self) -> dict[str, str]:
        """Yahoo answers the default client user agents with 429; send a browser-like one."""
        return {"User-Agent": USER_AGENT}

    def check_request(
        self, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> Timeframe:
        tf = self.check_timeframe(timeframe)
        _check_history(tf, LIMITS.get(str(tf), _NO_LIMIT), start, self.clock())
        return tf

    async def _chart(self, symbol: str, interval: str, start: datetime, end: datetime) -> _Chart:
        params: Params = {
            "period1": int(start.timestamp()),
            "period2": int(end.timestamp()),
            "interval": interval,
            "includePrePost": "false",
            "events": "div,splits",
        }
        payload = await self.get_json(
            f"/v8/finance/chart/{quote(symbol, safe='')}", params, symbol=symbol
        )
        chart = _parse_chart(payload, symbol, self.vendor_error)
        self._instruments[symbol] = _parse_meta(chart.meta, symbol)
        return chart

    def vendor_error(self, status: int, payload: Any, symbol: str) -> MarketLakeError:
        error = _chart_error(payload)
        code, text = error.get("code", ""), error.get("description", str(payload)[:200])
        if status == 404 or code == "Not Found":
            return SymbolNotFoundError(f"no such symbol at yahoo: {symbol} ({text})")
        if status in (400, 422) or code in ("Bad Request", "Unprocessable Entity"):
            return InputError(f"yahoo rejected the request for {symbol}: {text}")
        return ProviderError(f"yahoo answered HTTP {status} for {symbol}: {code} {text}".strip())


def _canonical(symbol: str, tf: Timeframe, chart: _Chart, events: dict[str, Any]) -> pa.Table:
    """Undo Yahoo's split adjustment and label daily bars by trading date."""
    zone = _zone(chart.meta)
    bars = chart.bars
    splits = _parse_events({"splits": events.get("splits")}, symbol, zone).to_pylist()
    cuts = [cutoff(s["ts"], Timeframe.parse("1m"), zone) for s in splits]
    price, volume = adjustment_factors(
        bars.column("ts"),
        cuts,
        ["split"] * len(cuts),
        [s["value"] for s in splits],
        [None] * len(cuts),
    )
    columns = {name: bars.column(name) for name in BAR_SCHEMA.names}
    for name in ("open", "high", "low", "close"):
        columns[name] = pc.divide(columns[name], pa.array(price))
    columns["volume"] = pc.divide(columns["volume"], pa.array(volume))
    columns["timeframe"] = pa.array([str(tf)] * bars.num_rows, pa.string())
    if not tf.is_intraday:
        columns["ts"] = session_labels(bars.column("ts").combine_chunks(), zone, tf)
    return _keep_last_per_label(pa.table(columns, schema=BAR_SCHEMA))


def _zone(meta: dict[str, Any]) -> str:
    return str(meta["exchangeTimezoneName"])


def _check_history(tf: Timeframe, limit: RangeLimit, start: datetime, now: datetime) -> None:
    if limit.history is None or start >= now - limit.history:
        return
    days = limit.history.days
    raise InputError(
        f"yahoo keeps {tf} bars for the last {days} days only, and --start "
        f"{start.date().isoformat()} is {(now - start).days} days back; start after "
        f"{(now - limit.history).date().isoformat()}, use a coarser timeframe "
        f"(5m/15m/30m: 60 days, 1h: 730 days, 1d: no limit) or another provider",
        param="start",
    )


def _chunks(
    start: datetime, end: datetime, span: timedelta | None
) -> list[tuple[datetime, datetime]]:
    if span is None:
        return [(start, end)]
    out = []
    lo = start
    while lo < end:
        out.append((lo, min(end, lo + span)))
        lo += span
    return out


def _chart_error(payload: Any) -> dict[str, Any]:
    if isinstance(payload, dict):
        for key in ("chart", "finance"):
            block = payload.get(key)
            if isinstance(block, dict) and isinstance(block.get("error"), dict):
                return dict(block["error"])
    return {}


def _parse_chart(payload: Any, symbol: str, to_error: Any) -> _Chart:
    """One chart answer → bars at their true instants (nulls dropped), meta and events."""
    chart = payload.get("chart") if isinstance(payload, dict) else None
    if not isinstance(chart, dict):
        raise ProviderError(f"yahoo chart answer for {symbol} has no 'chart' object")
    if not chart.get("result"):
        if chart.get("error"):
            raise to_error(200, payload, symbol)
        raise ProviderError(f"yahoo chart answer for {symbol} has no result and no error")
    result = chart["result"][0]
    meta = result.get("meta") or {}
    if "exchangeTimezoneName" not in meta:
        raise ProviderError(
            f"yahoo chart of {symbol} lacks meta.exchangeTimezoneName; the response format changed"
        )
    stamps = result.get("timestamp") or []
    events = result.get("events") or {}
    if not stamps:
        return _Chart(BAR_SCHEMA.empty_table(), meta, 0, events)
    quotes = (result.get("indicators") or {}).get("quote") or [{}]
    columns = {}
    for name in _QUOTE_FIELDS:
        values = quotes[0].get(name)
        if values is None or len(values) != len(stamps):
            raise ProviderError(
                f"yahoo chart of {symbol} lacks indicators.quote[0].{name} for its "
                f"{len(stamps)} timestamps; the response format changed or was cut"
            )
        columns[name] = pa.array(values, pa.float64())
    return _bars(symbol, meta, stamps, columns, events)


def _bars(
    symbol: str,
    meta: dict[str, Any],
    stamps: list[int],
    columns: dict[str, pa.Array],
    events: dict[str, Any],
) -> _Chart:
    valid = np.ones(len(stamps), dtype=bool)
    for column in columns.values():
        valid &= ~column.is_null().to_numpy(zero_copy_only=False)
    keep = pa.array(valid)
    n = int(valid.sum())
    table = pa.table(
        {
            "symbol": pa.array([symbol] * n, pa.string()),
            "timeframe": pa.array([""] * n, pa.string()),  # set by _canonical
            "ts": pc.multiply(pa.array(stamps, pa.int64()).filter(keep), 1_000_000).cast(TS_TYPE),
            **{name: columns[name].filter(keep) for name in _QUOTE_FIELDS},
            "trades": pa.nulls(n, pa.int64()),
            "vwap": pa.nulls(n, pa.float64()),
            "source": pa.array(["yahoo"] * n, pa.string()),
        },
        schema=BAR_SCHEMA,
    )
    return _Chart(table, meta, len(stamps) - n, events)


def _parse_meta(meta: dict[str, Any], symbol: str) -> Instrument:
    return Instrument(
        symbol=symbol,
        name=str(meta.get("longName") or meta.get("shortName") or ""),
        asset_class=_ASSET_CLASSES.get(str(meta.get("instrumentType")), "stock"),
        exchange=str(meta.get("fullExchangeName") or meta.get("exchangeName") or ""),
        currency=str(meta.get("currency") or "USD"),
        timezone=str(meta["exchangeTimezoneName"]),
    )


def _parse_events(events: dict[str, Any], symbol: str, timezone: str) -> pa.Table:
    """``events.splits`` and ``events.dividends`` → actions at their ex-date (00:00 UTC).

    Yahoo's dividends are adjusted for later splits like its prices; they are stored
    as paid, multiplied back by the ratios of the splits after them.
    """
    rows: list[tuple[int, str, float]] = []
    for item in (events.get("splits") or {}).values():
        ratio = float(item["numerator"]) / float(item["denominator"])
        rows.append((int(item["date"]), "split", ratio))
    splits = [(when, ratio) for when, _, ratio in rows]
    for item in (events.get("dividends") or {}).values():
        when = int(item["date"])
        later = float(np.prod([ratio for at, ratio in splits if at > when]))
        rows.append((when, "dividend", float(item["amount"]) * later))
    if not rows:
        return ACTION_SCHEMA.empty_table()
    rows.sort()
    instants = pa.array([r[0] * 1_000_000 for r in rows], pa.int64()).cast(TS_TYPE)
    return pa.table(
        {
            "symbol": pa.array([symbol] * len(rows), pa.string()),
            "ts": session_labels(instants, timezone, Timeframe.parse("1d")),
            "kind": pa.array([r[1] for r in rows], pa.string()),
            "value": pa.array([r[2] for r in rows], pa.float64()),
            "source": pa.array(["yahoo"] * len(rows), pa.string()),
        },
        schema=ACTION_SCHEMA,
    )


def _keep_last_per_label(table: pa.Table) -> pa.Table:
    """Yahoo sometimes repeats today's bar under a second instant; keep the newest."""
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    if len(ts) < 2 or bool(np.all(ts[1:] > ts[:-1])):
        return table
    order = np.argsort(ts, kind="stable")
    ts_sorted = ts[order]
    last = np.append(ts_sorted[1:] != ts_sorted[:-1], True)
    return table.take(pa.array(order[last]))
