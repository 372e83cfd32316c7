"""Scheduled ingestion: ``config/ingestion_schedule.yml`` run by APScheduler.

The file lists jobs, each with a crontab expression (UTC unless ``timezone``
says otherwise), a provider, symbols and a timeframe::

    jobs:
      - name: crypto-minutes
        cron: "*/15 * * * *"
        provider: binance
        symbols: [BTCUSDT, ETHUSDT]
        timeframe: 1m
        lookback: 2d          # how far back to start when nothing is stored yet

Each run tops up from the last stored bar: it fetches from that bar (inclusive,
so a bar that was still forming is replaced by its final values) up to now.
A run of a job never overlaps the previous run of the same job: APScheduler
allows one instance per job, and a per-job lock skips a run that would start
while another is still going (``--once`` runs included).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from marketlake.config import Settings
from marketlake.errors import ConfigError, MarketLakeError
from marketlake.ingest.jobs import IngestResult, run_ingest
from marketlake.providers import PROVIDERS, Provider, get_provider
from marketlake.schema import Timeframe, normalize_symbol, utcnow
from marketlake.store.base import Store
from marketlake.timeseries.times import parse_period

log = logging.getLogger("marketlake.ingest.scheduler")
SCHEDULE_FILE = "ingestion_schedule.yml"


class ScheduledJob(BaseModel):
    """One entry of the schedule file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    cron: str
    provider: str
    symbols: list[str] = Field(min_length=1)
    timeframe: str = "1d"
    lookback: str = "30d"
    timezone: str = "UTC"
    concurrency: int | None = Field(None, ge=1)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        _trigger(value, "UTC")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name such as UTC, "
                "America/New_York or Europe/London"
            ) from None
        return value

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value.lower() not in PROVIDERS:
            raise ValueError(
                f"unknown provider {value!r}; choose one of {', '.join(sorted(PROVIDERS))}"
            )
        return value.lower()

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, value: list[str]) -> list[str]:
        return [normalize_symbol(s) for s in value]

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, value: str) -> str:
        try:
            return str(Timeframe.parse(value))
        except MarketLakeError as exc:
            raise ValueError(exc.message) from None

    @field_validator("lookback")
    @classmethod
    def _lookback(cls, value: str) -> str:
        try:
            parse_period(value)
        except MarketLakeError:
            raise ValueError(
                f"{value!r} is not a period: use N followed by m, h, d, w, mo or y, e.g. 30d"
            ) from None
        return value


def _trigger(cron: str, timezone: str) -> Any:
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger.from_crontab(cron, timezone=timezone)


def load_schedule(path: Path) -> list[ScheduledJob]:
    """Read and check the schedule file; every problem names the job and the field."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"schedule file {path} not found; create it (see docs/providers.md) "
            "or pass --config FILE"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"schedule file {path} is not valid YAML: {exc}") from None
    entries = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"schedule file {path} needs a non-empty 'jobs:' list")
    jobs = []
    for index, entry in enumerate(entries):
        label = entry.get("name", f"#{index + 1}") if isinstance(entry, dict) else f"#{index + 1}"
        try:
            jobs.append(ScheduledJob.model_validate(entry))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "entry"
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"schedule file {path}, job {label}: {where}: {message}") from None
    names = [j.name for j in jobs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"schedule file {path}: job names must be unique; repeated: {', '.join(repeated)}"
        )
    return jobs


ProviderFactory = Callable[[str, Settings], Provider]


@dataclass
class Runner:
    """Runs scheduled jobs against one store, never two runs of the same job at once."""

    store: Store
    settings: Settings
    make_provider: ProviderFactory = field(default=lambda name, s: get_provider(name, s))
    clock: Callable[[], datetime] = utcnow
    _locks: dict[str, threading.Lock] = field(default_factory=dict)

    def lock(self, name: str) -> threading.Lock:
        return self._locks.setdefault(name, threading.Lock())

    def run(self, job: ScheduledJob) -> list[IngestResult] | None:
        """One run of ``job``; ``None`` when the previous run is still going (skipped)."""
        guard = self.lock(job.name)
        if not guard.acquire(blocking=False):
            log.warning("job %s is still running; this run is skipped", job.name)
            return None
        try:
            return asyncio.run(self._topup(job))
        finally:
            guard.release()

    def starts(self, job: ScheduledJob, now: datetime) -> dict[datetime, list[str]]:
        """Symbols grouped by where their top-up starts: the last stored bar, or lookback."""
        groups: dict[datetime, list[str]] = {}
        lookback = parse_period(job.lookback)
        for symbol in job.symbols:
            last = self.store.coverage(symbol, job.timeframe).last
            groups.setdefault(topup_window(last, now, lookback), []).append(symbol)
        return groups

    async def _topup(self, job: ScheduledJob) -> list[IngestResult]:
        now = self.clock().replace(second=0, microsecond=0)
        provider = self.make_provider(job.provider, self.settings)
        results = []
        try:
            for start, symbols in sorted(self.starts(job, now).items()):
                results.append(
                    await run_ingest(
                        self.store,
                        provider,
                        symbols,
                        job.timeframe,
                        start,
                        now,
                        refresh=True,
                        concurrency=job.concurrency or self.settings.ingest_concurrency,
                        batch_rows=self.settings.ingest_batch_rows,
                    )
                )
        finally:
            await provider.aclose()
        for result in results:
            log.info(
                "job %s: %s, %d bars (ingest job %s)",
                job.name,
                result.status,
                result.rows,
                result.job_id,
            )
        return results


def build_scheduler(jobs: list[ScheduledJob], runner: Runner) -> Any:
    """An APScheduler ``BackgroundScheduler`` with one cron job per entry (not started)."""
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone="UTC")
    for job in jobs:
        scheduler.add_job(
            runner.run,
            _trigger(job.cron, job.timezone),
            args=[job],
            id=job.name,
            name=job.name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=300,
        )
    return scheduler


def next_runs(jobs: list[ScheduledJob], now: datetime) -> dict[str, datetime]:
    """When each job fires next after ``now``."""
    return {
        job.name: _trigger(job.cron, job.timezone).get_next_fire_time(None, now) for job in jobs
    }


def topup_window(last: datetime | None, now: datetime, lookback: timedelta) -> datetime:
    """Where a top-up starts: the last stored bar (inclusive), else ``now - lookback``."""
    return last if last is not None and last < now else now - lookback
