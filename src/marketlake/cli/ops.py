"""Operations: ``jobs list|show`` and ``doctor``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from marketlake import __version__
from marketlake.cli.app import state
from marketlake.cli.output import console, emit_json, redact, show_table
from marketlake.errors import MarketLakeError

jobs_group = typer.Typer(help="Recorded jobs (ingest, import, …).", no_args_is_help=True)


@jobs_group.command("list")
def jobs_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many of the newest jobs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the newest jobs."""
    rows = []
    for job in state(ctx).store.list_jobs(limit=limit):
        symbols = job.summary.get("symbols", [])
        rows.append(
            {
                "id": job.id,
                "kind": job.kind,
                "status": job.status,
                "created": job.created_at,
                "rows": sum(s.get("inserted", 0) for s in symbols)
                if job.status not in ("running", "interrupted")
                or "rows_committed" not in job.summary
                else job.summary["rows_committed"],
                "error": (job.error or "")[:60],
            }
        )
    show_table(
        rows,
        ("id", "kind", "status", "created", "rows", "error"),
        title="Jobs",
        as_json=as_json,
        numeric=("rows",),
    )


@jobs_group.command("show")
def jobs_show(
    ctx: typer.Context,
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one job with its per-symbol counts."""
    job = state(ctx).store.get_job(job_id)
    data: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "params": job.params,
        "summary": job.summary,
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }
    if as_json:
        emit_json(data)
        return
    for key in (
        "id",
        "kind",
        "status",
        "params",
        "error",
        "created_at",
        "started_at",
        "finished_at",
    ):
        console.print(f"[bold]{key:>12}[/] {data[key]}", highlight=False)
    show_table(
        job.summary.get("symbols", []),
        ("symbol", "fetched", "inserted", "duplicates", "conflicts", "seconds", "error"),
        numeric=("fetched", "inserted", "duplicates", "conflicts", "seconds"),
    )


def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the set-up: version, store, schema version and reachable services."""
    st = state(ctx)
    checks: list[dict[str, str]] = [{"check": "version", "status": "ok", "detail": __version__}]
    ok = True
    try:
        store = st.store
        checks.append({"check": "store", "status": "ok", "detail": redact(st.settings.store)})
        checks.append(
            {"check": "schema version", "status": "ok", "detail": str(store.schema_version())}
        )
        checks.append(
            {"check": "instruments", "status": "ok", "detail": str(len(store.list_instruments()))}
        )
    except MarketLakeError as exc:
        ok = False
        checks.append({"check": "store", "status": "FAIL", "detail": redact(exc.message)})
    checks.append(_bus_check(st.settings.bus))
    ok = ok and checks[-1]["status"] != "FAIL"
    if as_json:
        emit_json({"ok": ok, "checks": checks})
    else:
        show_table(checks, ("check", "status", "detail"), title="marketlake doctor")
    if not ok:
        raise typer.Exit(1)


def _bus_check(uri: str) -> dict[str, str]:
    if uri.startswith("memory://"):
        return {"check": "bus", "status": "ok", "detail": "memory:// (in-process)"}
    try:
        import redis

        client = redis.Redis.from_url(uri, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001 - doctor reports any failure as text
        return {"check": "bus", "status": "FAIL", "detail": redact(f"{uri}: {exc}")}
    return {"check": "bus", "status": "ok", "detail": redact(uri)}


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_group, name="jobs")
    app.command("doctor")(doctor)
