"""Time helpers shared by every stage: periods (``7d``, ``1mo``), half-open ranges
from --start/--end/--period, ISO text of UTC instants and epoch microseconds of
pandas time columns."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from marketlake.errors import InputError
from marketlake.schema import from_epoch_us, parse_time, utcnow

_PERIOD_RE = re.compile(r"^(\d+)(m|h|d|w|mo|y)$")
_PERIOD_DAYS = {"d": 1, "w": 7, "mo": 30, "y": 365}


def parse_period(text: str, *, name: str = "--period") -> timedelta:
    """``7d``, ``1mo``, ``1y`` … as a timedelta (``name`` is how errors call the input)."""
    match = _PERIOD_RE.match(text.strip())
    if not match:
        raise InputError(
            f"{name} {text!r}: use N followed by m, h, d, w, mo or y (e.g. 1mo)", param="period"
        )
    count, unit = int(match.group(1)), match.group(2)
    if unit == "m":
        return timedelta(minutes=count)
    if unit == "h":
        return timedelta(hours=count)
    return timedelta(days=count * _PERIOD_DAYS[unit])


def resolve_range(
    start: str | None,
    end: str | None,
    period: str | None,
    *,
    required: bool = True,
    fields: bool = False,
) -> tuple[datetime | None, datetime | None]:
    """Turn --start/--end or --period into a half-open UTC range.

    Errors name the CLI options (``--start``); with ``fields``, the request fields of the
    API (``start``).
    """
    flag = "" if fields else "--"
    if period and start:
        raise InputError(
            f"give either {flag}start/{flag}end or {flag}period, not both", param="period"
        )
    stop = parse_time(end, param="end") if end else None
    if period:
        stop = stop or utcnow().replace(second=0, microsecond=0)
        return stop - parse_period(period, name=f"{flag}period"), stop
    begin = parse_time(start, param="start") if start else None
    if required and begin is None:
        example = '"period": "7d"' if fields else "--period 7d"
        raise InputError(
            f"give {flag}start (and optionally {flag}end) or {flag}period, e.g. {example}",
            param="start",
        )
    if begin is not None and stop is None and required:
        stop = utcnow().replace(second=0, microsecond=0)
    if begin is not None and stop is not None and begin >= stop:
        raise InputError(
            f"{flag}start {begin.isoformat()} must be before {flag}end {stop.isoformat()}",
            param="start",
        )
    return begin, stop


def iso_z(value: datetime | int | np.integer[Any]) -> str:
    """A UTC instant (a datetime, or epoch microseconds) as ISO 8601 text ending in ``Z``."""
    when = value if isinstance(value, datetime) else from_epoch_us(int(value))
    return when.isoformat().replace("+00:00", "Z")


def epoch_us(values: Any) -> np.ndarray[Any, Any]:
    """Epoch microseconds of a tz-aware pandas time column (NaT becomes the minimum int)."""
    naive = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return np.asarray(naive.to_numpy().astype("datetime64[us]").astype(np.int64))
