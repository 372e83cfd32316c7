"""Trading sessions of an instrument, as columnar arrays, for validation and daily roll-ups.

An instrument trades on an exchange calendar from ``exchange-calendars`` (sessions,
holidays, half days and lunch breaks), found from its ``exchange`` (a MIC such as
``XNYS`` or an alias such as ``NASDAQ``) or, failing that, from its asset class and
timezone. Crypto trades around the clock: its "sessions" are the calendar days of
the instrument's timezone, so a crypto 1d bar is a local day (a UTC day for the
usual ``timezone="UTC"``), DST included. FX uses local weekdays (24/5).

Every session carries its trading date; that date at 00:00 UTC labels the
session's daily bar (docs/cli.md, "Conventions"). Times are epoch microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np

from marketlake.errors import ConfigError
from marketlake.schema import US_PER_SECOND, Instrument
from marketlake.timeseries.times import epoch_us

Array = np.ndarray[Any, Any]
DAY_US = 86400 * US_PER_SECOND
ALWAYS_OPEN = "24/7"
WEEKDAYS = "24/5"

# Exchange names people use that exchange-calendars does not know as aliases.
_EXCHANGE_ALIASES = {
    "NYSEARCA": "ARCX",
    "NYSE ARCA": "ARCX",
    "AMEX": "XASE",
    "NYSEAMERICAN": "XASE",
    "NMS": "XNAS",
    "NGM": "XNAS",
    "NCM": "XNAS",
    "NYQ": "XNYS",
    "PCX": "ARCX",
    "CBOE": "BATS",
    "TSE": "XTKS",
    "LON": "XLON",
    "GER": "XETR",
}
# The main exchange of a timezone, for stocks, ETFs and indexes registered without one.
_TZ_EXCHANGES = {
    "America/New_York": "XNYS",
    "America/Toronto": "XTSE",
    "Europe/London": "XLON",
    "Europe/Berlin": "XETR",
    "Europe/Paris": "XPAR",
    "Europe/Amsterdam": "XAMS",
    "Europe/Zurich": "XSWX",
    "Asia/Tokyo": "XTKS",
    "Asia/Hong_Kong": "XHKG",
    "Asia/Shanghai": "XSHG",
    "Australia/Sydney": "XASX",
    "Asia/Kolkata": "XBOM",
}


def calendar_name(instrument: Instrument) -> str:
    """The calendar an instrument trades on: an exchange-calendars name, ``24/7`` or ``24/5``."""
    import exchange_calendars as xcals

    exchange = instrument.exchange.strip().upper()
    exchange = _EXCHANGE_ALIASES.get(exchange, exchange)
    if exchange and exchange in xcals.get_calendar_names(include_aliases=True):
        return exchange  # as named (XNAS, NASDAQ); exchange-calendars resolves aliases
    if instrument.asset_class == "crypto":
        return ALWAYS_OPEN
    if instrument.asset_class == "fx":
        return WEEKDAYS
    return _TZ_EXCHANGES.get(instrument.timezone, WEEKDAYS)


@dataclass(frozen=True, slots=True)
class Sessions:
    """Consecutive trading sessions: trading date (days since epoch), open and close (µs).

    ``break_starts``/``break_ends`` hold a lunch break per session (equal to the close
    where there is none). ``always_open`` is true for round-the-clock calendars, whose
    sessions tile time without holes.
    """

    name: str
    days: Array
    opens: Array
    closes: Array
    break_starts: Array
    break_ends: Array
    always_open: bool = False

    def __len__(self) -> int:
        return len(self.days)

    def overlapping(self, lo_us: int, hi_us: int) -> Sessions:
        """The sessions that overlap ``[lo_us, hi_us)``."""
        first = int(np.searchsorted(self.closes, lo_us, side="right"))
        last = int(np.searchsorted(self.opens, hi_us, side="left"))
        return self._take(slice(first, max(first, last)))

    def between_days(self, first_day: int, last_day: int) -> Sessions:
        """The sessions whose trading date lies in ``[first_day, last_day]``."""
        lo = int(np.searchsorted(self.days, first_day, side="left"))
        hi = int(np.searchsorted(self.days, last_day, side="right"))
        return self._take(slice(lo, hi))

    def _take(self, index: slice) -> Sessions:
        return Sessions(
            self.name,
            self.days[index],
            self.opens[index],
            self.closes[index],
            self.break_starts[index],
            self.break_ends[index],
            self.always_open,
        )

    @property
    def has_breaks(self) -> bool:
        return bool(np.any(self.break_starts < self.break_ends))

    def intervals(self) -> tuple[Array, Array, Array]:
        """Trading intervals ``(starts, ends, session_index)`` with lunch breaks cut out."""
        n = len(self)
        if not self.has_breaks:
            return self.opens, self.closes, np.arange(n)
        cut = self.break_starts < self.break_ends
        starts = np.concatenate([self.opens, self.break_ends[cut]])
        ends = np.concatenate([np.where(cut, self.break_starts, self.closes), self.closes[cut]])
        index = np.concatenate([np.arange(n), np.flatnonzero(cut)])
        order = np.argsort(starts, kind="stable")
        return starts[order], ends[order], index[order]


def sessions_for(instrument: Instrument, lo_us: int, hi_us: int) -> Sessions:
    """The sessions of ``instrument`` overlapping ``[lo_us, hi_us)`` (epoch microseconds)."""
    name = calendar_name(instrument)
    first_day = lo_us // DAY_US - 2
    last_day = -(-hi_us // DAY_US) + 2
    if name in (ALWAYS_OPEN, WEEKDAYS):
        table = _local_days(instrument.timezone, name == WEEKDAYS, first_day, last_day)
    else:
        first_year = _year(first_day) // 10 * 10
        last_year = max(_year(last_day) + 1, datetime.now(UTC).year + 1)
        table = _exchange_sessions(name, first_year, last_year)
    return table.overlapping(lo_us, hi_us)


def _year(day: int) -> int:
    return int(np.datetime64(int(day), "D").astype("datetime64[Y]").astype(np.int64)) + 1970


@lru_cache(maxsize=16)
def _exchange_sessions(name: str, first_year: int, last_year: int) -> Sessions:
    import exchange_calendars as xcals
    from exchange_calendars.errors import CalendarError

    try:
        cal = xcals.get_calendar(name, start=f"{first_year}-01-01", end=f"{last_year}-12-31")
    except (CalendarError, ValueError) as exc:
        raise ConfigError(
            f"exchange calendar {name} cannot cover {first_year}-{last_year}: {exc}"
        ) from None
    schedule = cal.schedule
    days = schedule.index.to_numpy().astype("datetime64[D]").astype(np.int64)
    opens, closes = epoch_us(schedule["open"]), epoch_us(schedule["close"])
    breaks = schedule["break_start"].notna().to_numpy()
    break_starts, break_ends = closes.copy(), closes.copy()
    if breaks.any():
        break_starts[breaks] = epoch_us(schedule["break_start"])[breaks]
        break_ends[breaks] = epoch_us(schedule["break_end"])[breaks]
    return Sessions(name, days, opens, closes, break_starts, break_ends)


def _local_days(timezone: str, weekdays_only: bool, first_day: int, last_day: int) -> Sessions:
    """Local calendar days of ``timezone`` as sessions (DST-aware midnights)."""
    import pandas as pd

    days = np.arange(first_day, last_day + 2, dtype=np.int64)
    local = pd.DatetimeIndex(days.astype("datetime64[D]"))
    bounds = local.tz_localize(
        timezone, nonexistent="shift_forward", ambiguous=np.ones(len(local), dtype=bool)
    )
    edges = np.asarray(
        bounds.tz_convert("UTC")
        .tz_localize(None)
        .to_numpy()
        .astype("datetime64[us]")
        .astype(np.int64)
    )
    opens, closes, days = edges[:-1], edges[1:], days[:-1]
    if weekdays_only:
        keep = (days + 3) % 7 < 5  # 1970-01-01 was a Thursday (weekday 3)
        opens, closes, days = opens[keep], closes[keep], days[keep]
    name = WEEKDAYS if weekdays_only else ALWAYS_OPEN
    return Sessions(
        f"{name}:{timezone}",
        days,
        opens,
        closes,
        closes.copy(),
        closes.copy(),
        always_open=not weekdays_only,
    )
