"""Column parsing and row rules for CSV bars, vectorised, with a per-row fallback.

Each parser turns one Arrow column (typed by Arrow's inference, or text) into a
NumPy array plus a mask of the rows it could read. Only rows that break a rule
become Python objects (:class:`~marketlake.providers.csv.reader.BadRow`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from marketlake.errors import InputError
from marketlake.schema import US_PER_SECOND, Timeframe, from_epoch_us, to_epoch_us


@dataclass(frozen=True, slots=True)
class BadRow:
    """One unusable line of the file."""

    line: int
    column: str
    value: str
    problem: str

    def __str__(self) -> str:
        if not self.column:
            return f"line {self.line}: {self.problem}"
        value = f" {self.value!r}" if self.value else ""
        return f"line {self.line}, column {self.column}{value}: {self.problem}"


Array = np.ndarray[Any, Any]
DAY_US = 86400 * US_PER_SECOND
_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?(nan|NaN|NAN|inf|Inf|INF|Infinity)$"
_EPOCH = re.compile(r"^[-+]?\d+(\.\d*)?$")
TIME_HINT = (
    "use ISO 8601 such as 2024-03-04 or 2024-03-04T14:30:00Z, or epoch seconds/ms, "
    "or pass --date-format (e.g. --date-format %m/%d/%Y for 03/04/2024)"
)
_DOTTED_DATE = r"^(\d{4})\.(\d{2})\.(\d{2})"  # MetaTrader: 2024.03.04


# Times a row may carry (µs since the epoch): year 0000 or 9999 is a broken date, not data.
EARLIEST_US = -5_364_662_400 * 1_000_000  # 1800-01-01
LATEST_US = 10_413_792_000 * 1_000_000  # 2300-01-01


def time_hint(date_format: str | None) -> str:
    """What to do about a cell that is not a time."""
    if date_format:
        return f"does not match --date-format {date_format!r}"
    return f"is not a time; {TIME_HINT}"


def zone(tz: str | None) -> ZoneInfo | None:
    """The ZoneInfo of an IANA name; a bad name is an input error."""
    if tz is None:
        return None
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(
            f"--tz {tz!r} is not an IANA timezone; use e.g. America/New_York or UTC", param="tz"
        ) from None


def _epoch_us(values: Array) -> Array:
    """Epoch numbers in s, ms, µs or ns (told apart by magnitude) as µs."""
    magnitude = np.abs(values)
    scale = np.select([magnitude < 1e11, magnitude < 1e14, magnitude < 1e17], [1e6, 1e3, 1.0], 1e-3)
    return np.asarray(np.round(values.astype(np.float64) * scale).astype(np.int64))


@dataclass(slots=True)
class Times:
    """Parsed times: µs since the epoch (UTC), readable rows, naive datetimes without a zone,
    local times that do not exist (a DST gap), and rows that are calendar dates.

    ``dates`` marks rows whose value is a date at 00:00 UTC that was never placed in a
    timezone (a date-only cell, a file of midnight-only naive times, or an aware time or
    epoch at exactly 00:00 UTC): for a daily bar that date is the trading date itself,
    whatever ``--tz`` says.
    """

    us: Array
    ok: Array
    naive: Array
    missing: Array
    dates: Array | None = None

    def date_rows(self) -> Array:
        """The ``dates`` mask (all false when the parser did not set it)."""
        if self.dates is None:
            return np.zeros(len(self.us), dtype=bool)
        return self.dates


def parse_times(column: pa.Array, tz: str | None, date_format: str | None = None) -> Times:
    """Parse a time column of any type Arrow inferred (or text); ``date_format`` is a
    strptime format for text cells (``%z`` makes them aware, else ``tz`` places them)."""
    n = len(column)
    none = np.zeros(n, dtype=bool)
    typ = column.type
    if date_format and (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        try:
            stamps = pc.strptime(
                pc.utf8_trim_whitespace(column),
                format=date_format,
                unit="us",
                error_is_null=True,
            )
        except pa.ArrowInvalid as exc:
            raise InputError(
                f"--date-format {date_format!r} is not a strptime format: {exc}",
                param="date_format",
            ) from None
        return parse_times(stamps, tz)
    valid = np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False))
    if pa.types.is_timestamp(typ):
        us = np.asarray(
            pc.fill_null(
                column.cast(pa.timestamp("us", typ.tz), safe=False).cast(pa.int64()), 0
            ).to_numpy()
        )
        if typ.tz is not None:
            return Times(us, valid, none, none, valid & (us % DAY_US == 0))
        return _localize(us, valid, tz)
    if pa.types.is_date(typ):
        days = np.asarray(pc.fill_null(column.cast(pa.date32()).cast(pa.int32()), 0).to_numpy())
        return Times(days.astype(np.int64) * DAY_US, valid, none, none, valid.copy())
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        values = np.asarray(pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy())
        us = _epoch_us(values)
        ok = valid & np.isfinite(values)
        return Times(us, ok, none, none, ok & (us % DAY_US == 0))
    return _parse_text(column.cast(pa.string()), valid, tz)


def _localize(naive_us: Array, valid: Array, tz: str | None) -> Times:
    """Naive wall-clock µs: midnight-only values are dates (UTC); others need ``tz``."""
    n = len(naive_us)
    has_time = valid & (naive_us % DAY_US != 0)
    if tz is None or not has_time.any():
        return Times(
            naive_us,
            valid,
            has_time if tz is None else np.zeros(n, bool),
            np.zeros(n, bool),
            valid & ~has_time,
        )
    local = pa.array(naive_us, pa.int64()).cast(pa.timestamp("us"))
    try:
        aware = pc.assume_timezone(local, timezone=tz, ambiguous="earliest", nonexistent="raise")
    except pa.ArrowInvalid:
        return _localize_rows(naive_us, valid, tz)
    return Times(
        np.asarray(aware.cast(pa.int64()).to_numpy()), valid, np.zeros(n, bool), np.zeros(n, bool)
    )


def _localize_rows(naive_us: Array, valid: Array, tz: str) -> Times:
    """Row by row, to find the local times a DST change skipped."""
    zone_info = zone(tz)
    out = naive_us.copy()
    missing = np.zeros(len(naive_us), dtype=bool)
    for i in np.flatnonzero(valid):
        wall = from_epoch_us(int(naive_us[i])).replace(tzinfo=None)
        local = wall.replace(tzinfo=zone_info)
        back = local.astimezone(UTC).astimezone(zone_info).replace(tzinfo=None)
        if back != wall:
            missing[i] = True
            continue
        out[i] = to_epoch_us(local)
    return Times(out, valid & ~missing, np.zeros(len(naive_us), bool), missing)


def _parse_text(text: pa.Array, valid: Array, tz: str | None) -> Times:
    """Text times: try whole-column casts first, then row by row."""
    for typ in (pa.timestamp("us", "UTC"), pa.timestamp("us")):
        try:
            return parse_times(pc.cast(text, typ), tz)
        except pa.ArrowInvalid:
            continue
    trimmed = pc.utf8_trim_whitespace(text)
    if pc.any(pc.match_substring_regex(trimmed, _DOTTED_DATE)).as_py():
        dashed = pc.replace_substring_regex(trimmed, _DOTTED_DATE, r"\1-\2-\3")
        return _parse_text(dashed, valid, tz)
    if pc.all(pc.match_substring_regex(trimmed, _EPOCH.pattern)).as_py():
        return parse_times(pc.cast(trimmed, pa.float64()), tz)
    return _parse_rows(text.to_pylist(), valid, tz)


def _parse_rows(values: list[str | None], valid: Array, tz: str | None) -> Times:
    n = len(values)
    us = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    naive = np.zeros(n, dtype=bool)
    for i, value in enumerate(values):
        parsed = _parse_one(value) if value is not None else None
        if parsed is None:
            continue
        us[i], ok[i], naive[i] = parsed[0], True, parsed[1]
    aware_dates = ok & ~naive & (us % DAY_US == 0)
    if naive.any():
        local = _localize(us, naive, tz)
        us = np.where(naive, local.us, us)
        ok &= ~local.missing
        dates = aware_dates | (naive & local.date_rows())
        return Times(us, ok & valid, local.naive, local.missing, dates & valid)
    return Times(us, ok & valid, np.zeros(n, bool), np.zeros(n, bool), aware_dates & valid)


def _parse_one(text: str) -> tuple[int, bool] | None:
    """(µs, naive) of one time text, or None when it is not a time."""
    text = text.strip()
    if _EPOCH.match(text):
        return int(_epoch_us(np.array([float(text)]))[0]), False
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        return to_epoch_us(value.replace(tzinfo=UTC)), True
    return to_epoch_us(value), False


@dataclass(slots=True)
class Numbers:
    """Parsed numbers (NaN where missing), which cells were empty, which were not numbers."""

    values: Array
    empty: Array
    unreadable: Array


def parse_numbers(column: pa.Array, decimal: str = ".") -> Numbers:
    """Parse a numeric column of any type Arrow inferred (or text); ``decimal`` is the
    file's decimal mark."""
    empty = np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False))
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = column if decimal == "." else pc.replace_substring(column, decimal, ".")
        try:
            column = pc.cast(text, pa.float64())
        except pa.ArrowInvalid:
            trimmed = pc.utf8_trim_whitespace(text)
            number = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER), False)
            column = pc.cast(
                pc.if_else(number, trimmed, pa.scalar(None, pa.string())), pa.float64()
            )
            unreadable = ~empty & ~np.asarray(number.to_numpy(zero_copy_only=False))
            values = np.asarray(column.to_numpy(zero_copy_only=False))
            return Numbers(values, empty, unreadable)
    values = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
    return Numbers(values, empty, np.zeros(len(values), dtype=bool))


def infer_timeframe(us: Array) -> Timeframe | None:
    """The timeframe that the most common gap between rows suggests."""
    ts = np.unique(us)
    if ts.size < 2:
        return None
    gaps, counts = np.unique(np.diff(ts), return_counts=True)
    gap = int(gaps[np.argmax(counts)])
    if gap % DAY_US == 0 or bool(np.all(ts % DAY_US == 0)):
        days = max(1, round(gap / DAY_US))
        if days <= 4:
            return Timeframe.parse("1d")
        if days <= 8:
            return Timeframe.parse("1w")
        return Timeframe.parse("1mo") if 27 <= days <= 32 else Timeframe.parse(f"{days}d")
    minutes, rest = divmod(gap, 60 * US_PER_SECOND)
    if rest or minutes == 0:
        return None
    return Timeframe.parse(f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m")


def _text(value: Any) -> str:
    """A number as a person would write it: 0 not 0.0, every digit kept."""
    if isinstance(value, float | np.floating):
        return str(np.format_float_positional(float(value), trim="-"))
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def _cell(column: pa.Array, i: int) -> str:
    """Cell ``i`` as the file wrote it, also a date Python cannot hold (year 0000)."""
    try:
        value = column[i].as_py()
    except (OverflowError, ValueError):
        return str(column.slice(i, 1).cast(pa.string())[0].as_py())
    return "" if value is None else _text(value)


def _not_a_number(text: str) -> str:
    if re.match(r"^[-+]?\d+,\d+$", text.strip()):
        return "is not a number (a decimal comma? pass --decimal ,)"
    return "is not a number"


@dataclass
class RowChecks:
    """The rules every CSV row must pass, for one timeframe and timezone."""

    timeframe: Timeframe
    tz: str | None = None
    date_format: str | None = None
    decimal: str = "."
    relabelled: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        zone(self.tz)

    def check(
        self, columns: dict[str, tuple[pa.Array, str]], lines: Array, rows: Array
    ) -> tuple[dict[str, Array], Array, list[BadRow]]:
        """Parse ``columns`` and check the rows where ``rows`` is true.

        Returns the parsed arrays, a mask of bad rows and one BadRow for each.
        """
        bad: list[BadRow] = []
        bad_mask = np.zeros(len(lines), dtype=bool)

        def flag(mask: Array, column: str, value: Any, problem: Any) -> None:
            new = mask & rows & ~bad_mask
            bad.extend(
                BadRow(int(lines[i]), column, value(i), problem(i)) for i in np.flatnonzero(new)
            )
            bad_mask[new] = True

        raw = {name: col for name, (col, _) in columns.items()}
        names = {name: label for name, (_, label) in columns.items()}
        cell = {name: (lambda i, c=col: _cell(c, i)) for name, col in raw.items()}
        times = parse_times(raw["ts"], self.tz, self.date_format)
        first_naive = np.flatnonzero(times.naive & rows)
        if first_naive.size:
            i = int(first_naive[0])
            raise InputError(
                f"line {lines[i]}, column {names['ts']} {cell['ts'](i)!r}: a time "
                "without a timezone; pass --tz with the file's timezone (e.g. "
                "--tz America/New_York or --tz UTC)",
                param="tz",
            )
        flag(
            times.missing,
            names["ts"],
            cell["ts"],
            lambda i: f"does not exist in {self.tz} (skipped by a clock change)",
        )
        flag(
            ~times.ok & ~np.asarray(pc.is_valid(raw["ts"]).to_numpy(zero_copy_only=False)),
            names["ts"],
            cell["ts"],
            lambda i: "is empty",
        )
        hint = time_hint(self.date_format)
        flag(~times.ok, names["ts"], cell["ts"], lambda i: hint)
        flag(
            times.ok & ((times.us < EARLIEST_US) | (times.us >= LATEST_US)),
            names["ts"],
            cell["ts"],
            lambda i: (
                "is out of range: market data lies between 1800 and 2299; check the "
                "date column (or --date-format)"
            ),
        )
        parsed: dict[str, Array] = {"ts": self._label(times)}
        for name in ("open", "high", "low", "close", "volume", "trades", "vwap", "quote volume"):
            if name not in raw:
                continue
            number = parse_numbers(raw[name], self.decimal)
            parsed[name] = self._check_number(name, number, names[name], cell[name], flag)
        self._check_ohlc(parsed, names, flag)
        if self.timeframe.is_intraday:
            step = self.timeframe.micros
            flag(
                parsed["ts"] % step != 0,
                names["ts"],
                cell["ts"],
                lambda i: f"is not on a {self.timeframe} bar boundary (pass the right --timeframe)",
            )
        return parsed, bad_mask, bad

    def _label(self, times: Times) -> Array:
        """Daily and coarser bars carry their local trading date at 00:00 UTC (then the
        Monday of the week, the first of the month).

        A row that is a date already (see :class:`Times`) keeps it; ``--tz`` only places
        the rows that carry a time of day, which are converted to their local date once.
        """
        us, ok = times.us, times.ok
        if self.timeframe.is_intraday:
            return us
        local = us
        if self.tz is not None:
            aware = pa.array(us, pa.int64()).cast(pa.timestamp("us", "UTC"))
            local = np.asarray(
                pc.local_timestamp(pc.cast(aware, pa.timestamp("us", self.tz)))
                .cast(pa.int64())
                .to_numpy()
            )
            local = np.where(times.date_rows(), us, local)
        labels = np.asarray(self.timeframe.floor_us((local // DAY_US) * DAY_US))
        self.relabelled += int(((labels != us) & ok).sum())
        return labels

    @staticmethod
    def _check_number(name: str, number: Numbers, label: str, cell: Any, flag: Any) -> Array:
        values = number.values
        optional = name in ("trades", "vwap", "quote volume")
        if not optional:
            flag(number.empty, label, cell, lambda i: "is empty")
        flag(number.unreadable, label, cell, lambda i: _not_a_number(cell(i)))
        flag(~number.empty & np.isnan(values), label, cell, lambda i: "is NaN")
        if name in ("open", "high", "low", "close"):
            flag(~(values > 0) & ~number.empty, label, cell, lambda i: "must be a positive price")
        else:
            flag(values < 0, label, cell, lambda i: f"{name} must not be negative")
        if name == "trades":
            flag(
                ~number.empty & (values != np.round(values)),
                label,
                cell,
                lambda i: "trades must be a whole number",
            )
        return values

    @staticmethod
    def _check_ohlc(p: dict[str, Array], names: dict[str, str], flag: Any) -> None:
        o, h, lo, c = p["open"], p["high"], p["low"], p["close"]
        flag(
            h < lo,
            names["high"],
            lambda i: _text(h[i]),
            lambda i: f"high {_text(h[i])} is below low {_text(lo[i])}",
        )
        top = np.maximum(o, c)
        flag(
            h < top,
            names["high"],
            lambda i: _text(h[i]),
            lambda i: (
                f"high {_text(h[i])} is below {'open' if o[i] >= c[i] else 'close'} {_text(top[i])}"
            ),
        )
        bottom = np.minimum(o, c)
        flag(
            lo > bottom,
            names["low"],
            lambda i: _text(lo[i]),
            lambda i: (
                f"low {_text(lo[i])} is above "
                f"{'open' if o[i] <= c[i] else 'close'} {_text(bottom[i])}"
            ),
        )
