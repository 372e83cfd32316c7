"""The provider contract: one class per vendor, yielding canonical Arrow bars.

A provider declares what it offers (``name``, ``timeframes``,
``requests_per_minute``) and implements :meth:`Provider.fetch_bars`, an async
generator of Arrow tables in :data:`marketlake.schema.BAR_SCHEMA`. HTTP
providers receive an injected ``httpx.AsyncClient`` so tests can pass a mock
transport or a client pointed at a local server.

While fetching, a provider may learn more than bars: rows it had to drop (nulls),
the instrument's exchange, currency and timezone (:meth:`Provider.describe`) and
corporate actions (:meth:`Provider.corporate_actions`); the ingest job stores them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import ClassVar

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from marketlake.config import Settings
from marketlake.errors import InputError
from marketlake.schema import TS_TYPE, Instrument, Timeframe, utcnow
from marketlake.timeseries.adjust import ACTION_SCHEMA


class Provider(ABC):
    """A source of canonical bars for symbols, timeframes and half-open ranges."""

    name: ClassVar[str]
    timeframes: ClassVar[tuple[str, ...]]
    needs_network: ClassVar[bool] = True
    requests_per_minute: ClassVar[int] = 600

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._client = client
        self.clock: Callable[[], datetime] = utcnow
        self.dropped: dict[str, int] = {}
        self._instruments: dict[str, Instrument] = {}
        self._actions: dict[str, list[pa.Table]] = {}

    def check_timeframe(self, timeframe: str | Timeframe) -> Timeframe:
        """Parse ``timeframe`` and fail clearly when this provider does not offer it."""
        tf = Timeframe.parse(timeframe)
        if self.timeframes and str(tf) not in self.timeframes:
            raise InputError(
                f"{self.name} does not offer timeframe {tf}; it offers "
                f"{', '.join(self.timeframes)} (roll finer bars up with `marketlake aggregate`)",
                param="timeframe",
            )
        return tf

    def check_request(
        self, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> Timeframe:
        """Refuse what this provider cannot serve before any request (timeframe, history)."""
        return self.check_timeframe(timeframe)

    @abstractmethod
    def fetch_bars(
        self, symbol: str, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> AsyncGenerator[pa.Table, None]:
        """Yield bars of ``symbol`` in ``[start, end)`` as canonical Arrow tables."""

    async def describe(self, symbol: str) -> Instrument | None:
        """What the provider knows about a symbol (exchange, currency, timezone), if anything."""
        return self._instruments.get(symbol.upper())

    def corporate_actions(self, symbol: str) -> pa.Table:
        """Splits and dividends seen while fetching ``symbol`` (:data:`ACTION_SCHEMA`)."""
        tables = self._actions.get(symbol.upper(), [])
        return pa.concat_tables(tables) if tables else ACTION_SCHEMA.empty_table()

    def note_dropped(self, symbol: str, rows: int) -> None:
        """Count vendor rows that could not become bars (nulls); the job reports them."""
        if rows:
            self.dropped[symbol.upper()] = self.dropped.get(symbol.upper(), 0) + rows

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def session_labels(ts: pa.Array, timezone: str, tf: Timeframe) -> pa.Array:
    """Labels of daily and coarser bars from their true open instants (the convention of
    docs/cli.md, "Conventions").

    A daily bar becomes its trading date (in the exchange ``timezone``) at 00:00 UTC,
    a weekly bar the Monday of that week, a monthly bar the first of the month.
    """
    local = pc.local_timestamp(ts.cast(pa.timestamp("us", tz=timezone)))
    days = pc.floor_temporal(local, unit="day").cast(pa.int64()).to_numpy()
    if tf.unit in ("w", "mo"):
        days = tf.floor_us(days)
    return pa.array(np.asarray(days, dtype=np.int64), pa.int64()).cast(TS_TYPE)
