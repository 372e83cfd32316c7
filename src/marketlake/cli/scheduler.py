"""``marketlake scheduler``: run the ingestion schedule (config/ingestion_schedule.yml)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from marketlake.cli.app import state
from marketlake.cli.output import console, error, show_table

if TYPE_CHECKING:
    pass


if TYPE_CHECKING:
    from marketlake.ingest.scheduler import Runner, ScheduledJob


def scheduler(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option(help="Schedule file (default config/ingestion_schedule.yml).")
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Run every job once now, then exit.")
    ] = False,
    list_jobs: Annotated[
        bool, typer.Option("--list", help="Show the jobs and their next run, then exit.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --list or --once: JSON.")] = False,
) -> None:
    """Run scheduled ingest jobs: each run tops up from the last stored bar; runs never overlap.

    Example: `marketlake scheduler --list`, then `marketlake scheduler` (Ctrl-C stops it).
    """
    from marketlake.ingest.scheduler import (
        SCHEDULE_FILE,
        Runner,
        build_scheduler,
        load_schedule,
        next_runs,
    )
    from marketlake.schema import utcnow

    st = state(ctx)
    jobs = load_schedule(config or st.settings.config_dir / SCHEDULE_FILE)
    if list_jobs:
        upcoming = next_runs(jobs, utcnow())
        rows = [
            {**job.model_dump(), "symbols": " ".join(job.symbols), "next_run": upcoming[job.name]}
            for job in jobs
        ]
        show_table(
            rows,
            ("name", "cron", "provider", "symbols", "timeframe", "next_run"),
            title="Ingestion schedule",
            as_json=as_json,
        )
        return
    runner = Runner(st.store, st.settings)
    if once:
        _run_once(runner, jobs, as_json=as_json)
        return
    background = build_scheduler(jobs, runner)
    background.start()
    console.print(f"scheduler running {len(jobs)} jobs; Ctrl-C stops it", highlight=False)
    try:
        while background.running:
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping after the running jobs finish")
    finally:
        background.shutdown(wait=True)


def _run_once(runner: Runner, jobs: list[ScheduledJob], *, as_json: bool) -> None:
    rows: list[dict[str, Any]] = []
    for job in jobs:
        rows.extend(
            {
                "job": job.name,
                "ingest_job": result.job_id,
                "status": result.status,
                "bars": result.rows,
                "errors": "; ".join(f"{s.symbol}: {s.error}" for s in result.symbols if s.error),
            }
            for result in runner.run(job) or []
        )
    show_table(
        rows,
        ("job", "ingest_job", "status", "bars", "errors"),
        title="Scheduled runs",
        as_json=as_json,
        numeric=("bars",),
    )
    failed = [r["job"] for r in rows if r["status"] != "succeeded"]
    if failed:
        error(f"jobs with failures: {', '.join(sorted(set(failed)))}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("scheduler")(scheduler)
