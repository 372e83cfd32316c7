"""Ingestion windows: when a live feed is connected (UTC).

``--window 08:00-09:00`` or ``config/ingestion_schedule.yml``::

    windows:
      - "08:00-09:00"                       # every day
      - {start: "22:00", end: "02:00"}      # across midnight
      - {start: "13:30", end: "20:00", days: [mon, tue, wed, thu, fri]}

A window includes its start and excludes its end; ``days`` name the day the
window *starts* on. No windows at all means always connected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import yaml

from marketlake.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


def _time(text: object, where: str) -> time:
    match = _TIME_RE.match(str(text).strip())
    if match is None:
        raise ConfigError(f"{where}: {text!r} is not a time; use HH:MM or HH:MM:SS (UTC)")
    return time(int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


@dataclass(frozen=True, slots=True)
class Window:
    """A daily span ``[start, end)`` in UTC on some weekdays (0 = Monday)."""

    start: time
    end: time
    days: frozenset[int] = frozenset(range(7))

    @classmethod
    def parse(cls, text: str, *, where: str = "--window") -> Window:
        """``HH:MM-HH:MM`` (seconds optional)."""
        parts = str(text).split("-")
        if len(parts) != 2:
            raise ConfigError(
                f"{where}: {text!r} is not a window; use HH:MM-HH:MM in UTC, e.g. 08:00-09:00"
            )
        return cls(_time(parts[0], where), _time(parts[1], where))

    def _spans(self, now: datetime) -> list[tuple[datetime, datetime]]:
        """The occurrences starting yesterday, today and in the next 7 days."""
        spans = []
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        for offset in range(-1, 8):
            day = midnight + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            start = day.replace(
                hour=self.start.hour, minute=self.start.minute, second=self.start.second
            )
            end = day.replace(hour=self.end.hour, minute=self.end.minute, second=self.end.second)
            if end <= start:
                end += timedelta(days=1)
            spans.append((start, end))
        return spans


@dataclass(frozen=True, slots=True)
class Schedule:
    """A set of windows; empty means always open."""

    windows: tuple[Window, ...] = ()

    @classmethod
    def parse(cls, texts: list[str]) -> Schedule:
        return cls(tuple(Window.parse(t) for t in texts))

    @classmethod
    def load(cls, path: Path) -> Schedule:
        """Read ``ingestion_schedule.yml``; a missing file means always open."""
        if not path.exists():
            return cls()
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        items = data.get("windows", []) if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ConfigError(f"{path}: expected a list under 'windows'")
        return cls(
            tuple(_window(item, f"{path}: window #{i}") for i, item in enumerate(items, start=1))
        )

    @property
    def always(self) -> bool:
        return not self.windows

    def _spans(self, now: datetime) -> list[tuple[datetime, datetime]]:
        return sorted(span for w in self.windows for span in w._spans(now))

    def is_open(self, now: datetime) -> bool:
        return self.always or any(s <= now < e for s, e in self._spans(now))

    def open_until(self, now: datetime) -> datetime | None:
        """When the window holding ``now`` closes (joined with overlapping ones); None: never."""
        if self.always:
            return None
        until: datetime | None = None
        for start, end in self._spans(now):
            if start <= now < end or (until is not None and start <= until):
                until = max(until or end, end)
        return until

    def next_open(self, now: datetime) -> datetime | None:
        """The next start after ``now`` (None when always open or never)."""
        starts = [s for s, _ in self._spans(now) if s > now]
        return min(starts) if starts else None


def _window(item: Any, where: str) -> Window:
    if isinstance(item, str):
        return Window.parse(item, where=where)
    if not isinstance(item, dict) or "start" not in item or "end" not in item:
        raise ConfigError(f'{where}: give "HH:MM-HH:MM" or {{start: HH:MM, end: HH:MM}}')
    days = item.get("days", DAYS)
    unknown = [d for d in days if str(d).lower()[:3] not in DAYS]
    if unknown:
        raise ConfigError(f"{where}: field 'days': unknown day(s) {unknown}; use mon … sun")
    return Window(
        _time(item["start"], where),
        _time(item["end"], where),
        frozenset(DAYS.index(str(d).lower()[:3]) for d in days),
    )
