"""Time helpers shared by every stage: periods (``7d``, ``1mo``) and half-open ranges
from --start/--end/--period."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from marketlake.errors import InputError
from marketlake.schema import parse_time, utcnow

_PERIOD_RE = re.compile(r"^(\d+)(m|h|d|w|mo|y)$")
_PERIOD_DAYS = {"d": 1, "w": 7, "mo": 30, "y": 365}


def parse_period(text: str) -> timedelta:
    """``7d``, ``1mo``, ``1y`` … as a timedelta."""
    match = _PERIOD_RE.match(text.strip())
    if not match:
        raise InputError(
            f"--period {text!r}: use N followed by m, h, d, w, mo or y (e.g. 1mo)", param="period"
        )
    count, unit = int(match.group(1)), match.group(2)
    if unit == "m":
        return timedelta(minutes=count)
    if unit == "h":
        return timedelta(hours=count)
    return timedelta(days=count * _PERIOD_DAYS[unit])


def resolve_range(
    start: str | None, end: str | None, period: str | None, *, required: bool = True
) -> tuple[datetime | None, datetime | None]:
    """Turn --start/--end or --period into a half-open UTC range."""
    if period and start:
        raise InputError("give either --start/--end or --period, not both", param="period")
    stop = parse_time(end, param="end") if end else None
    if period:
        stop = stop or utcnow().replace(second=0, microsecond=0)
        return stop - parse_period(period), stop
    begin = parse_time(start, param="start") if start else None
    if required and begin is None:
        raise InputError("give --start (and optionally --end) or --period", param="start")
    if begin is not None and stop is None and required:
        stop = utcnow().replace(second=0, microsecond=0)
    if begin is not None and stop is not None and begin >= stop:
        raise InputError(
            f"--start {begin.isoformat()} must be before --end {stop.isoformat()}", param="start"
        )
    return begin, stop
