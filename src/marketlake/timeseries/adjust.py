"""Corporate actions (splits, dividends) and split- and dividend-adjusted prices.

The store keeps bars as traded (raw) and the actions in their own table; reads
may ask for adjusted prices, computed here back in time from the newest bar:

* a split of ``r`` for 1 (``value = r``, e.g. 4.0 for 4:1) on ex-date ``E``
  divides every price before ``E`` by ``r`` and multiplies volumes by ``r``;
* a cash dividend ``D`` on ex-date ``E`` multiplies every price before ``E`` by
  ``1 - D / C``, where ``C`` is the raw close of the last bar before ``E``
  (the CRSP / Yahoo "adjusted close" convention). Volumes stay.

Factors multiply, so a bar is scaled by the product over all later actions.
An action's ``ts`` is its ex-date at 00:00 UTC, like a daily bar label; "before
``E``" means an earlier trading date in the instrument's timezone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

from marketlake.schema import TS_TYPE, Instrument, Timeframe

ACTION_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # split | dividend
        pa.field("value", pa.float64(), nullable=False),  # split ratio or cash per share
        pa.field("source", pa.string(), nullable=False),
    ]
)
_PRICES = ("open", "high", "low", "close", "vwap")


class ActionSource(Protocol):
    """What adjusting needs of a store (``marketlake.store.Store`` has it): the recorded
    actions, raw closes before a date and the instrument's time zone."""

    def read_actions(
        self,
        symbols: str | Sequence[str],
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        kind: str | None = None,
    ) -> pa.Table: ...

    def close_before(
        self, symbol: str, timeframe: str | Timeframe, when: datetime, *, within_days: int = 30
    ) -> float | None: ...

    def instrument(self, symbol: str) -> Instrument: ...


class _Page(Protocol):
    @property
    def table(self) -> pa.Table: ...


class BarSource(ActionSource, Protocol):
    """An :class:`ActionSource` that reads bars too."""

    def read_bars(
        self,
        symbols: str,
        timeframe: Timeframe,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
    ) -> _Page: ...


def cutoff(ex_date: datetime, timeframe: Timeframe, timezone: str) -> datetime:
    """The instant before which a bar lies on a trading date earlier than ``ex_date``.

    Daily and coarser bars are labelled with their date at 00:00 UTC, so the label
    of the ex-date itself is the cut-off; intraday bars carry true instants, so the
    cut-off is local midnight of the ex-date in the exchange ``timezone``.
    """
    if not timeframe.is_intraday:
        return ex_date
    local = datetime.combine(ex_date.date(), time(0), tzinfo=ZoneInfo(timezone))
    return local.astimezone(UTC)


def adjustment_factors(
    ts: pa.Array | pa.ChunkedArray,
    cutoffs: list[datetime],
    kinds: list[str],
    values: list[float],
    prev_closes: list[float | None],
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Price and volume factors of every bar from the actions after it (see module doc)."""
    import pyarrow.compute as pc

    ts_us = pc.cast(ts, pa.int64()).to_numpy(zero_copy_only=False)
    price = np.ones(len(ts_us))
    volume = np.ones(len(ts_us))
    for when, kind, value, prev in zip(cutoffs, kinds, values, prev_closes, strict=True):
        before = ts_us < int(when.timestamp() * 1_000_000)
        if kind == "split" and value > 0:
            price[before] /= value
            volume[before] *= value
        elif kind == "dividend" and prev is not None and prev > value > 0:
            price[before] *= 1.0 - value / prev
    return price, volume


def adjust_bars(
    bars: pa.Table, price: np.ndarray[Any, Any], volume: np.ndarray[Any, Any]
) -> pa.Table:
    """``bars`` with prices (open, high, low, close, vwap) and volumes scaled by the factors."""
    import pyarrow.compute as pc

    out = bars
    for name in _PRICES:
        index = out.schema.get_field_index(name)
        scaled = pc.multiply(out.column(name), pa.array(price))
        out = out.set_column(index, name, scaled)
    index = out.schema.get_field_index("volume")
    out = out.set_column(index, "volume", pc.multiply(out.column("volume"), pa.array(volume)))
    return out.cast(bars.schema)


def read_adjusted(
    store: BarSource,
    symbol: str,
    timeframe: str | Timeframe,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int | None = None,
) -> pa.Table:
    """Split- and dividend-adjusted bars of one symbol (one page of ``limit`` rows at most)."""
    tf = Timeframe.parse(timeframe)
    return adjust_table(
        store, symbol, tf, store.read_bars(symbol, tf, start, end, limit=limit).table
    )


def adjust_table(store: ActionSource, symbol: str, tf: Timeframe, bars: pa.Table) -> pa.Table:
    """``bars`` of one symbol (time-ordered, any page of them) adjusted for the splits and
    dividends recorded after each bar."""
    if bars.num_rows == 0:
        return bars
    first = bars.column("ts")[0].as_py()
    actions = store.read_actions(symbol, start=first - timedelta(days=7))
    if actions.num_rows == 0:
        return bars
    zone = store.instrument(symbol).timezone
    rows = actions.to_pylist()
    cuts = [cutoff(r["ts"], tf, zone) for r in rows]
    prevs = [
        store.close_before(symbol, tf, when) if r["kind"] == "dividend" else None
        for r, when in zip(rows, cuts, strict=True)
    ]
    price, volume = adjustment_factors(
        bars.column("ts"), cuts, [r["kind"] for r in rows], [r["value"] for r in rows], prevs
    )
    return adjust_bars(bars, price, volume)
