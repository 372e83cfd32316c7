"""No bar from the future: ranges of ingest and repair end with the bucket forming now.

A provider may answer for any range (the synthetic one invents prices for 2030, a
mirror replays what it holds), so the check is here, before any provider is asked:
a range that starts after the bucket forming now is bad input, and one that ends
later is cut there (a gap never extends past now).
"""

from __future__ import annotations

from datetime import datetime

from marketlake.errors import InputError
from marketlake.schema import Timeframe, utcnow


def forming_end(tf: Timeframe, now: datetime | None = None) -> datetime:
    """The end of the ``tf`` bucket that holds ``now``: no bar can start at or after it."""
    return tf.next_start(tf.floor(now or utcnow()))


def clamp_to_now(
    start: datetime, end: datetime, tf: Timeframe, now: datetime | None = None
) -> datetime:
    """``end`` cut to :func:`forming_end`; an :class:`InputError` when ``start`` is later."""
    limit = forming_end(tf, now)
    if start >= limit:
        raise InputError(
            f"start {start.isoformat()} is in the future (now is "
            f"{(now or utcnow()).isoformat(timespec='seconds')}); no {tf} bar can start "
            "after the one forming now: pass an earlier --start",
            param="start",
        )
    return min(end, limit)
