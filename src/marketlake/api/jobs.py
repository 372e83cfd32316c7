"""Ingest jobs started through the API: recorded first, then run in the background.

``POST /ingest/run`` checks the request, records a ``pending`` job and answers
202 with its id at once; the run itself is an asyncio task of the server
process that outlives the request and writes its progress and outcome to the
``jobs`` table (``GET /jobs/{id}``). Stopping the server cancels running jobs
and marks them ``cancelled``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import structlog

from marketlake.api.observability import ApiMetrics
from marketlake.config import Settings
from marketlake.errors import MarketLakeError
from marketlake.ingest.jobs import run_ingest
from marketlake.providers import get_provider
from marketlake.providers.base import Provider
from marketlake.schema import Timeframe, normalize_symbol
from marketlake.store.base import Store

log = structlog.get_logger("marketlake.api")


@dataclass(frozen=True, slots=True)
class IngestPlan:
    """A checked ingest request."""

    provider: Provider
    symbols: list[str]
    timeframe: Timeframe
    start: datetime
    end: datetime


class JobRunner:
    """Runs API-started jobs as tasks and keeps them alive until they finish."""

    def __init__(self, settings: Settings, metrics: ApiMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def plan(
        self, provider: str, symbols: list[str], timeframe: str, start: datetime, end: datetime
    ) -> IngestPlan:
        """Check everything a run would trip over, before anything is recorded."""
        source = get_provider(provider, self.settings)
        tf = source.check_request(timeframe, start, end)
        names = list(dict.fromkeys(normalize_symbol(s) for s in symbols))
        return IngestPlan(source, names, tf, start, end)

    def start_record(self, store: Store, plan: IngestPlan) -> str:
        """Record the job as ``pending`` (blocking); return its id."""
        return store.create_job(
            "ingest",
            {
                "provider": plan.provider.name,
                "symbols": plan.symbols,
                "timeframe": str(plan.timeframe),
                "start": plan.start.isoformat(),
                "end": plan.end.isoformat(),
                "origin": "api",
            },
        ).id

    def launch(self, store: Store, plan: IngestPlan, job_id: str) -> None:
        """Run the recorded job as a task of the running event loop."""
        task = asyncio.get_running_loop().create_task(
            self._run(store, plan, job_id), name=f"ingest-{job_id}"
        )
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    @property
    def running(self) -> list[str]:
        return list(self._tasks)

    async def _run(self, store: Store, plan: IngestPlan, job_id: str) -> None:
        provider_name = plan.provider.name
        try:
            result = await run_ingest(
                store,
                plan.provider,
                plan.symbols,
                plan.timeframe,
                plan.start,
                plan.end,
                job_id=job_id,
            )
        except asyncio.CancelledError:
            store.update_job(job_id, status="cancelled", error="the server stopped during the job")
            self.metrics.jobs.labels("cancelled").inc()
            raise
        except MarketLakeError as exc:
            store.update_job(job_id, status="failed", error=exc.message)
            self.metrics.jobs.labels("failed").inc()
            log.warning("job_failed", job_id=job_id, error=exc.message)
            return
        except Exception as exc:
            store.update_job(job_id, status="failed", error=f"internal error: {exc!r}")
            self.metrics.jobs.labels("failed").inc()
            log.exception("job_crashed", job_id=job_id)
            return
        finally:
            await plan.provider.aclose()
        for symbol in result.symbols:
            for outcome in ("inserted", "duplicates", "conflicts"):
                rows = getattr(symbol, outcome)
                self.metrics.ingest_rows.labels(provider_name, outcome).inc(rows)
        self.metrics.jobs.labels(result.status).inc()
        log.info(
            "job_finished", job_id=job_id, status=result.status, seconds=round(result.seconds, 3)
        )

    async def shutdown(self) -> None:
        """Cancel running jobs (each marks itself cancelled) and wait for them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
