"""The ingestion scheduler: the schedule file, top-ups from the last bar, no overlapping runs."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from marketlake.cli.app import cli
from marketlake.config import Settings
from marketlake.errors import ConfigError
from marketlake.ingest.scheduler import (
    Runner,
    ScheduledJob,
    build_scheduler,
    load_schedule,
    next_runs,
)
from marketlake.store.base import Store

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 3, 6, 12, 0, 30, tzinfo=UTC)
CRYPTO = ScheduledJob(
    name="crypto",
    cron="*/15 * * * *",
    provider="synthetic",
    symbols=["btcusdt", "ETHUSDT"],
    timeframe="1h",
    lookback="1d",
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedule.yml"
    path.write_text(text)
    return path


def runner(store: Store, now: datetime = NOW) -> Runner:
    return Runner(store, Settings(), clock=lambda: now)


def test_the_shipped_schedule_file_loads() -> None:
    jobs = load_schedule(REPO / "config" / "ingestion_schedule.yml")
    assert [(j.name, j.provider, j.timeframe, j.symbols) for j in jobs] == [
        ("us-stocks-daily", "yahoo", "1d", ["AAPL", "MSFT", "SPY"]),
        ("crypto-minutes", "binance", "1m", ["BTCUSDT", "ETHUSDT"]),
    ]


def test_next_runs_follow_the_cron_expressions() -> None:
    jobs = load_schedule(REPO / "config" / "ingestion_schedule.yml")
    assert next_runs(jobs, NOW) == {
        "us-stocks-daily": datetime(2024, 3, 6, 22, 30, tzinfo=UTC),
        "crypto-minutes": datetime(2024, 3, 6, 12, 15, tzinfo=UTC),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "jobs:\n - {name: a, cron: '61 * * * *', provider: synthetic, symbols: [X]}",
            r"job a: cron: Error validating expression '61'",
        ),
        (
            "jobs:\n - {name: a, cron: '* * * * *', provider: nope, symbols: [X]}",
            "job a: provider: unknown provider 'nope'",
        ),
        (
            "jobs:\n - {name: a, cron: '* * * * *', provider: synthetic, symbols: [X], "
            "timeframe: 7x}",
            "job a: timeframe: unknown timeframe '7x'",
        ),
        (
            "jobs:\n - {name: a, cron: '* * * * *', provider: synthetic, symbols: [X], "
            "lookback: soon}",
            "job a: lookback: 'soon' is not a period",
        ),
        (
            "jobs:\n - {name: a, cron: '* * * * *', provider: synthetic, symbols: [X], "
            "timezone: Mars/Olympus}",
            "job a: timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            "jobs:\n - {name: a, cron: '* * * * *', provider: synthetic, symbols: []}",
            "job a: symbols: List should have at least 1 item",
        ),
        (
            "jobs:\n - {name: a, cron: '* * * * *', provider: synthetic, symbols: [X], every: 5}",
            "job a: every: Extra inputs are not permitted",
        ),
        ("jobs: []", "needs a non-empty 'jobs:' list"),
        ("jobs: [", "is not valid YAML"),
        (
            "jobs:\n - {name: a, cron: '* * * * *', provider: synthetic, symbols: [X]}\n"
            " - {name: a, cron: '* * * * *', provider: synthetic, symbols: [Y]}",
            "job names must be unique; repeated: a",
        ),
    ],
)
def test_a_bad_schedule_names_the_job_and_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_schedule(write(tmp_path, text))


def test_a_missing_schedule_file_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found; create it"):
        load_schedule(tmp_path / "nope.yml")


def test_the_first_run_starts_lookback_before_now(duck: Store) -> None:
    [result] = runner(duck).run(CRYPTO) or []
    assert result.status == "succeeded"
    assert duck.coverage("BTCUSDT", "1h").first == datetime(2024, 3, 5, 12, tzinfo=UTC)
    assert duck.coverage("BTCUSDT", "1h").last == datetime(2024, 3, 6, 11, tzinfo=UTC)


def test_later_runs_top_up_from_the_last_stored_bar(duck: Store) -> None:
    runner(duck).run(CRYPTO)
    [result] = runner(duck, NOW + timedelta(hours=3)).run(CRYPTO) or []
    assert [(s.symbol, s.fetched, s.inserted, s.duplicates) for s in result.symbols] == [
        ("BTCUSDT", 4, 3, 1),
        ("ETHUSDT", 4, 3, 1),
    ]
    assert duck.count_bars("BTCUSDT", "1h") == 27


def test_symbols_at_different_points_top_up_separately(duck: Store) -> None:
    runner(duck).run(CRYPTO.model_copy(update={"symbols": ["BTCUSDT"]}))
    results = runner(duck, NOW + timedelta(hours=2)).run(CRYPTO) or []
    assert [[s.symbol for s in r.symbols] for r in results] == [["ETHUSDT"], ["BTCUSDT"]]
    assert duck.count_bars("ETHUSDT", "1h") == 24
    assert duck.count_bars("BTCUSDT", "1h") == 26


def test_a_run_while_the_previous_one_is_going_is_skipped(duck: Store) -> None:
    jobs = runner(duck)
    jobs.lock(CRYPTO.name).acquire()
    try:
        assert jobs.run(CRYPTO) is None
    finally:
        jobs.lock(CRYPTO.name).release()
    assert duck.count_bars() == 0
    assert jobs.run(CRYPTO) is not None


def test_two_threads_starting_the_same_job_run_it_once(duck: Store) -> None:
    jobs = runner(duck)
    outcomes: list[object] = []
    gate = threading.Barrier(2)

    def start() -> None:
        gate.wait()
        outcomes.append(jobs.run(CRYPTO))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o is None for o in outcomes) == [False, True]


def test_apscheduler_gets_one_cron_job_per_entry_without_overlap(duck: Store) -> None:
    scheduler = build_scheduler([CRYPTO], runner(duck))
    [job] = scheduler.get_jobs()
    assert (job.id, job.max_instances, job.coalesce) == ("crypto", 1, True)
    assert str(job.trigger) == "cron[month='*', day='*', day_of_week='*', hour='*', minute='*/15']"


def test_scheduler_list_and_once_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "jobs:\n - {name: c, cron: '0 * * * *', provider: synthetic, "
        "symbols: [BTCUSDT], timeframe: 1h, lookback: 1d}\n",
    )
    store = ["--store", f"duckdb:///{tmp_path}/s.duckdb"]
    assert cli([*store, "scheduler", "--config", str(path), "--list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["name"], listed["symbols"]) == ("c", "BTCUSDT")
    assert cli([*store, "scheduler", "--config", str(path), "--once", "--json"]) == 0
    [ran] = json.loads(capsys.readouterr().out)
    assert (ran["job"], ran["status"], ran["bars"]) == ("c", "succeeded", 24)


def test_scheduler_runs_until_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "jobs:\n - {name: c, cron: '0 0 1 1 *', provider: synthetic, symbols: [BTCUSDT]}\n",
    )

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("marketlake.cli.scheduler.time.sleep", interrupt)
    code = cli(["--store", f"duckdb:///{tmp_path}/s.duckdb", "scheduler", "--config", str(path)])
    assert code == 0
    assert "scheduler running 1 jobs" in capsys.readouterr().out
