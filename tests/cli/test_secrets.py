"""A planted password never shows: every CLI command's output, the API's answers and the
server's log are searched for it (real PostgreSQL, real Redis, a real server process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from marketlake.config import redact
from tests.api.server import running
from tests.conftest import PG

PLANTED = "Pl4nted-s3cret"
pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://app:hunter2@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://user:p%40ss@cache/1 and more", "rediss://user:***@cache/1 and more"),
        ("store postgresql://u:a@b@host/db failed", "store postgresql://u:***@host/db failed"),
        (
            "postgresql://app@db/x?password=hunter2&schema=s",
            "postgresql://app@db/x?password=***&schema=s",
        ),
        ("duckdb:///data/x.duckdb", "duckdb:///data/x.duckdb"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_redact_hides_every_password_form(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert "hunter2" not in redact(text)


def _planted_store() -> str:
    uri = PG.connect()  # postgresql://postgres@127.0.0.1:5432/test?schema=… (trust auth)
    return uri.replace("://postgres@", f"://postgres:{PLANTED}@", 1)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from marketlake.cli.app import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_no_cli_command_shows_the_store_or_bus_password(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    store = _planted_store()
    env = os.environ | {"MARKETLAKE_STORE": store}
    redis_env = env | {"MARKETLAKE_BUS": f"redis://:{PLANTED}@127.0.0.1:6379/0"}
    runs = {
        "doctor": _cli("doctor", env=env),
        "doctor --json": _cli("doctor", "--json", env=env),
        "doctor, redis bus": _cli("doctor", "--json", env=redis_env),
        "migrate --check": _cli("migrate", "--check", env=env),
        "instruments list": _cli("instruments", "list", env=env),
        "jobs list": _cli("jobs", "list", env=env),
        "bars NOPE": _cli("bars", "NOPE", env=env),
        "bad store option": _cli("--store", store + "&pool_max=lots", "jobs", "list", env=env),
        "unreachable store": _cli(
            "--store", f"postgresql://postgres:{PLANTED}@127.0.0.1:1/test", "jobs", "list", env=env
        ),
    }
    for name, done in runs.items():
        output = done.stdout + done.stderr
        assert PLANTED not in output, f"{name}: {output}"
        assert "Traceback" not in output, f"{name}: {output}"
    doctor = {row["check"]: row for row in json.loads(runs["doctor --json"].stdout)["checks"]}
    assert doctor["store"]["detail"].startswith("postgresql://postgres:***@127.0.0.1:5432/test")
    bus = {row["check"]: row for row in json.loads(runs["doctor, redis bus"].stdout)["checks"]}[
        "bus"
    ]
    assert bus["detail"].startswith("redis://:***@127.0.0.1:6379/0")
    assert runs["bad store option"].returncode == 2
    assert runs["bad store option"].stderr.startswith("error: ")


def test_no_api_answer_or_log_line_shows_the_password(tmp_path: Path) -> None:
    env = {
        "MARKETLAKE_STORE": _planted_store(),
        "MARKETLAKE_BUS": f"redis://:{PLANTED}@127.0.0.1:1/0",
        "MARKETLAKE_API_RATE_LIMIT_PER_MINUTE": "0",
    }
    log = tmp_path / "server.log"
    answers: list[str] = []
    with running(["serve", "--log-format", "console"], log, env=env) as (base, _):
        for path in (
            "/api/v1/health",
            "/api/v1/ready",
            "/api/v1/instruments",
            "/api/v1/bars/NOPE",
            "/api/v1/jobs/nope",
            "/metrics",
            "/openapi.json",
            "/",
        ):
            r = httpx.get(base + path, timeout=30)
            answers.append(f"{path} {r.status_code} {r.headers} {r.text}")
        ready = httpx.get(base + "/api/v1/ready", timeout=30)
    assert ready.status_code == 503  # nothing listens on port 1
    assert "redis://:***@127.0.0.1:1/0" in ready.json()["detail"]
    for answer in answers:
        assert PLANTED not in answer, answer
    assert PLANTED not in log.read_text()
