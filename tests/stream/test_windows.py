"""Ingestion windows: open and close times in UTC, across midnight, on weekdays."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from marketlake.errors import ConfigError
from marketlake.stream.windows import Schedule, Window


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_no_windows_means_always_open() -> None:
    schedule = Schedule()
    assert schedule.is_open(_at("2024-03-05T03:00"))
    assert schedule.open_until(_at("2024-03-05T03:00")) is None
    assert schedule.next_open(_at("2024-03-05T03:00")) is None


def test_a_window_includes_its_start_and_excludes_its_end() -> None:
    schedule = Schedule.parse(["08:00-09:00"])
    assert not schedule.is_open(_at("2024-03-05T07:59:59"))
    assert schedule.is_open(_at("2024-03-05T08:00"))
    assert not schedule.is_open(_at("2024-03-05T09:00"))
    assert schedule.open_until(_at("2024-03-05T08:30")) == _at("2024-03-05T09:00")
    assert schedule.next_open(_at("2024-03-05T09:00")) == _at("2024-03-06T08:00")


def test_a_window_across_midnight() -> None:
    schedule = Schedule.parse(["22:00-02:00"])
    assert schedule.is_open(_at("2024-03-05T23:00"))
    assert schedule.is_open(_at("2024-03-06T01:59"))
    assert not schedule.is_open(_at("2024-03-06T02:00"))
    assert schedule.open_until(_at("2024-03-06T01:00")) == _at("2024-03-06T02:00")


def test_adjacent_windows_join() -> None:
    schedule = Schedule.parse(["08:00-09:00", "09:00-09:30"])
    assert schedule.open_until(_at("2024-03-05T08:10")) == _at("2024-03-05T09:30")


def test_schedule_file_with_weekdays(tmp_path: Path) -> None:
    path = tmp_path / "ingestion_schedule.yml"
    path.write_text(
        'windows:\n  - "06:00-06:30"\n'
        '  - {start: "13:30", end: "20:00", days: [mon, tue, wed, thu, fri]}\n'
    )
    schedule = Schedule.load(path)
    assert schedule.is_open(_at("2024-03-08T14:00"))  # a Friday
    assert not schedule.is_open(_at("2024-03-09T14:00"))  # a Saturday
    assert schedule.next_open(_at("2024-03-09T07:00")) == _at("2024-03-10T06:00")
    assert schedule.next_open(_at("2024-03-11T07:00")) == _at("2024-03-11T13:30")
    assert Schedule.load(tmp_path / "missing.yml").always


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('windows:\n  - "8-9"\n', r"window #1: '8' is not a time"),
        ('windows:\n  - "08:00"\n', "is not a window; use HH:MM-HH:MM"),
        ("windows:\n  - {start: '08:00'}\n", r"window #1: give"),
        ("windows:\n  - {start: '08:00', end: '09:00', days: [funday]}\n", "unknown day"),
        ("windows: 3\n", "expected a list"),
        ("windows: [\n", "not valid YAML"),
    ],
)
def test_bad_schedule_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "ingestion_schedule.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Schedule.load(path)


def test_window_option_with_seconds() -> None:
    window = Window.parse("08:00:30-08:01")
    assert window.start.second == 30
    with pytest.raises(ConfigError, match="--window: '25:00' is not a time"):
        Window.parse("25:00-26:00")
