"""Bad input to the CLI: one `error:` line, exit code 2, no traceback; help that tells."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import pytest
import typer.main

from marketlake.cli.app import app, cli

Capsys = pytest.CaptureFixture[str]


def _commands() -> list[list[str]]:
    """Every command path of the CLI, groups included."""
    root = typer.main.get_command(app)
    out: list[list[str]] = [[]]

    def walk(group: Any, path: list[str]) -> None:
        for name, command in group.commands.items():
            out.append([*path, name])
            if hasattr(command, "commands"):
                walk(command, [*path, name])

    walk(root, [])
    return out


def test_no_help_shows_a_bool_placeholder_after_a_flag(capsys: Capsys) -> None:
    commands = _commands()
    assert len(commands) > 20
    for path in commands:
        assert cli([*path, "--help"]) == 0
        out = capsys.readouterr().out
        assert "<bool>" not in out, f"marketlake {' '.join(path)} --help:\n{out}"


def test_help_lists_the_choices_of_an_option(capsys: Capsys) -> None:
    assert cli(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "<json|console>" in out
    assert "1<=x<=65535" in out


def _one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "--port", "99999"], "less than or equal to 65535"),
        (["serve", "--log-format", "loud"], "'loud' is not one of 'json', 'console'"),
    ],
)
def test_a_bad_serve_option_is_exit_2(capsys: Capsys, args: list[str], says: str) -> None:
    assert cli(args) == 2
    assert says in _one_error(capsys.readouterr().err)


def test_a_port_in_use_is_one_error_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "marketlake", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    line = _one_error(done.stderr)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in line
    assert "serving" not in done.stdout


def test_a_synthetic_stock_range_before_the_calendar_says_so(capsys: Capsys) -> None:
    code = cli(
        ["ingest", "synthetic", "AAPL", "-t", "1d", "--start", "1800-01-01", "--end", "1800-02-01"]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err + captured.out
    assert "follow the NYSE calendar from 1991" in captured.out + captured.err


# -- start-up: what `--help` loads ----------------------------------------------------------

HEAVY = ("duckdb", "pyarrow", "pandas", "polars", "fastapi", "numba", "exchange_calendars")


def test_help_loads_none_of_the_heavy_modules() -> None:
    """A correctness check of lazy imports (the timing is in bench/bench_startup.py): the
    modules `marketlake --help` and every command's `--help` load leave the heavy
    libraries unimported."""
    probe = (
        "import sys\n"
        "from marketlake.cli.app import cli\n"
        "codes = [cli(['--help']), cli(['serve', '--help']), cli(['bars', '--help'])]\n"
        "assert codes == [0, 0, 0], codes\n"
        f"print('heavy:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "heavy:", done.stdout[-500:]


def test_the_provider_names_of_the_help_are_the_registry_s() -> None:
    from marketlake.cli.data import PROVIDER_NAMES
    from marketlake.providers import PROVIDERS

    assert tuple(sorted(PROVIDERS)) == PROVIDER_NAMES


# -- issue 18: settings, bus, store paths, unknown symbols ------------------------------------


def _run(*args: str, env: dict[str, str] | None = None, cwd: Any = None) -> Any:
    """`marketlake ARGS` as a subprocess with a bounded wait."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "marketlake", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("MARKETLAKE_API_CORS_ORIGINS", "notjson", "MARKETLAKE_API_CORS_ORIGINS is not valid JSON"),
        ("MARKETLAKE_QUALITY_RULES", "{bad", "MARKETLAKE_QUALITY_RULES is not valid JSON"),
        ("MARKETLAKE_ROLLUP_TIMEFRAMES", '["7q"]', "unknown timeframe '7q'"),
        ("MARKETLAKE_ANALYTICS_BUCKET", "2w", "unknown timeframe '2w'"),
        ("MARKETLAKE_LOG_LEVEL", "LOUD", "unknown log level 'LOUD': use one of CRITICAL"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
    tmp_path: Any, variable: str, value: str, says: str
) -> None:
    done = _run(
        "instruments",
        "list",
        env={variable: value, "MARKETLAKE_STORE": "duckdb:///:memory:"},
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    line = _one_error(done.stderr)
    assert says in line
    assert variable in line


def test_a_lower_case_log_level_is_fine() -> None:
    from marketlake.config import load_settings

    assert load_settings(log_level="debug").log_level == "DEBUG"


@pytest.mark.parametrize(
    ("command", "bus", "says"),
    [
        (["worker"], "redis://127.0.0.1:1/0", "cannot reach the bus redis://127.0.0.1:1/0"),
        (["worker"], "redis://:hunter2@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
        (["worker"], "redis://127.0.0.1:6379/99", "DB index is out of range"),
        (["stream", "binance", "BTCUSDT"], "redis://127.0.0.1:1/0", "cannot reach the bus"),
        (["stream", "binance", "BTCUSDT"], "redis://127.0.0.1:6379/99", "DB index"),
        (["metrics"], "redis://127.0.0.1:1/0", "cannot reach the bus"),
    ],
)
def test_an_unreachable_bus_is_one_redacted_line_and_exit_2(
    tmp_path: Any, command: list[str], bus: str, says: str
) -> None:
    done = _run(
        *command,
        env={
            "MARKETLAKE_BUS": bus,
            "MARKETLAKE_STORE": "duckdb:///:memory:",
            "MARKETLAKE_METRICS_PORT": "0",
        },
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    line = _one_error(done.stderr)
    assert says in line
    assert "MARKETLAKE_BUS" in line
    assert "hunter2" not in done.stderr + done.stdout


def test_an_unsupported_bus_names_the_supported_ones(
    capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARKETLAKE_BUS", "kafka://broker:9092")
    assert cli(["--store", "duckdb:///:memory:", "worker"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "use memory:// or redis://" in line
    assert "Redis" not in line.split(":", 1)[1].split("use")[0]


@pytest.mark.parametrize(
    "command",
    [
        ["bars", "AAPL"],
        ["instruments", "list"],
        ["instruments", "show", "AAPL"],
        ["export", "--to", "lake"],
        ["jobs", "list"],
        ["aggregate"],
        ["backtest", "list"],
        ["keys", "list"],
        ["actions", "AAPL"],
    ],
)
def test_a_read_command_refuses_a_store_path_that_does_not_exist(
    capsys: Capsys, tmp_path: Any, command: list[str]
) -> None:
    missing = tmp_path / "nowhere" / "typo.duckdb"
    assert cli(["--store", f"duckdb:///{missing}", *command]) == 2
    line = _one_error(capsys.readouterr().err)
    assert f"no DuckDB store at {missing}" in line
    assert "marketlake demo" in line
    assert not (tmp_path / "nowhere").exists()
    assert not (tmp_path / "lake").exists()


def test_a_writing_command_still_creates_the_store(capsys: Capsys, tmp_path: Any) -> None:
    fresh = tmp_path / "new" / "fresh.duckdb"
    assert cli(["--store", f"duckdb:///{fresh}", "instruments", "add", "FOO"]) == 0
    assert fresh.exists()
    assert cli(["--store", f"duckdb:///{fresh}", "instruments", "list", "--json"]) == 0
    assert "FOO" in capsys.readouterr().out


def test_copy_refuses_a_source_that_does_not_exist(capsys: Capsys, tmp_path: Any) -> None:
    source, target = tmp_path / "typo.duckdb", tmp_path / "to.duckdb"
    assert cli(["copy", "--from", f"duckdb:///{source}", "--to", f"duckdb:///{target}"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert f"no DuckDB store at {source}" in line
    assert "--from" in line
    assert not source.exists()
    assert not target.exists()


@pytest.mark.parametrize("name", ["prices.csv", "bars.parquet", "rows.JSON"])
def test_a_data_file_named_as_the_store_is_refused(
    capsys: Capsys, tmp_path: Any, name: str
) -> None:
    data = tmp_path / name
    data.write_text("date,open\n2024-01-02,1\n")
    for command in (["bars", "AAPL"], ["ingest", "synthetic", "AAPL", "--period", "2d"]):
        assert cli(["--store", f"duckdb:///{data}", *command]) == 2
        line = _one_error(capsys.readouterr().err)
        assert "data file, not a DuckDB store" in line
    assert data.read_text() == "date,open\n2024-01-02,1\n"
    fresh = tmp_path / f"new-{name}"
    assert cli(["--store", f"duckdb:///{fresh}", "instruments", "add", "X"]) == 2
    assert not fresh.exists()
    capsys.readouterr()


@pytest.fixture
def stored(tmp_path: Any) -> str:
    """A store with AAPL 1m bars."""
    from marketlake.schema import Instrument
    from marketlake.store import open_store
    from tests.conftest import bars_for

    uri = f"duckdb:///{tmp_path}/s.duckdb"
    with open_store(uri) as store:
        store.add_instrument(Instrument(symbol="AAPL", exchange="XNAS"))
        store.write_bars(bars_for(["AAPL"]))
    return uri


@pytest.mark.parametrize(
    "command",
    [
        ["bars", "NOPE"],
        ["aggregate", "NOPE"],
        ["export", "--symbols", "NOPE", "--to", "lake"],
        ["metrics", "NOPE"],
        ["actions", "NOPE"],
        ["instruments", "show", "NOPE"],
    ],
)
def test_an_unknown_symbol_is_exit_2_everywhere(
    capsys: Capsys, tmp_path: Any, stored: str, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli(["--store", stored, *command]) == 2
    assert "unknown symbol NOPE" in _one_error(capsys.readouterr().err)
    assert not (tmp_path / "lake").exists()


def test_a_timeframe_that_is_not_stored_names_the_stored_ones(capsys: Capsys, stored: str) -> None:
    assert cli(["--store", stored, "bars", "AAPL", "-t", "3m"]) == 0
    captured = capsys.readouterr()
    assert "no 3m bars of AAPL; stored timeframes: 1m" in captured.out + captured.err


def test_export_to_an_existing_file_is_refused_and_the_file_kept(
    capsys: Capsys, tmp_path: Any, stored: str
) -> None:
    existing = tmp_path / "existing.csv"
    existing.write_text("keep me\n")
    assert cli(["--store", stored, "export", "--to", str(existing)]) == 2
    assert "is an existing file; export writes a directory" in _one_error(capsys.readouterr().err)
    assert existing.read_text() == "keep me\n"


HEADER = b"date,open,high,low,close,volume\n"


def _daily_rows(n: int) -> bytes:
    from datetime import date, timedelta

    first = date(2001, 1, 2)
    return b"".join(f"{first + timedelta(days=i)},1,2,0.5,1.5,10\n".encode() for i in range(n))


@pytest.mark.parametrize("rows_before", [1, 3000])
def test_a_non_utf8_byte_names_its_line_and_nothing_is_written(
    capsys: Capsys, tmp_path: Any, rows_before: int
) -> None:
    from marketlake.store import open_store

    path = tmp_path / "latin1.csv"
    path.write_bytes(HEADER + _daily_rows(rows_before) + b"2020-01-01,1,2,0.5,1.5,1\xe90\n")
    uri = f"duckdb:///{tmp_path}/s.duckdb"
    assert cli(["--store", uri, "import-csv", str(path), "--symbol", "LATIN"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert f"is not UTF-8 text: line {rows_before + 2} has the byte 0xe9" in line
    assert "iconv" in line
    with open_store(uri) as store:
        assert store.count_bars("LATIN", "1d") == 0


@pytest.mark.parametrize("date", ["0000-01-01", "9999-12-31"])
def test_a_row_dated_out_of_range_is_a_bad_line_not_a_traceback(
    capsys: Capsys, tmp_path: Any, date: str
) -> None:
    from marketlake.store import open_store

    path = tmp_path / "dates.csv"
    path.write_bytes(HEADER + _daily_rows(3) + f"{date},1,2,0.5,1.5,10\n".encode())
    uri = f"duckdb:///{tmp_path}/s.duckdb"
    assert cli(["--store", uri, "import-csv", str(path), "--symbol", "OLD"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert f"line 5, column date '{date}': is out of range" in line
    with open_store(uri) as store:
        assert store.count_bars("OLD", "1d") == 0
    skip = ["--symbol", "OLD", "--on-error", "skip"]
    assert cli(["--store", uri, "import-csv", str(path), *skip]) == 0
    capsys.readouterr()
    with open_store(uri) as store:
        assert store.count_bars("OLD", "1d") == 3


def test_an_unknown_time_zone_in_the_schedule_is_one_line(
    capsys: Capsys, tmp_path: Any, stored: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "ingestion_schedule.yml").write_text(
        "jobs:\n  - name: mars\n    cron: '*/15 * * * *'\n    provider: synthetic\n"
        "    symbols: [AAPL]\n    timezone: Mars/Olympus\n"
    )
    monkeypatch.setenv("MARKETLAKE_CONFIG_DIR", str(tmp_path / "config"))
    assert cli(["--store", stored, "scheduler", "--list"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "job mars: timezone: unknown time zone 'Mars/Olympus'" in line


def test_a_fifo_given_as_the_csv_is_refused_without_blocking(tmp_path: Any) -> None:
    import os

    fifo = tmp_path / "prices.csv"
    os.mkfifo(fifo)
    done = _run(  # a reader of the FIFO would block: the subprocess bounds the wait
        "--store", f"duckdb:///{tmp_path}/s.duckdb", "import-csv", str(fifo), "--symbol", "F"
    )
    assert done.returncode == 2, done.stderr
    assert "is not a regular file; give a CSV file" in _one_error(done.stderr)


def test_an_unknown_instrument_timezone_is_one_plain_line(capsys: Capsys, tmp_path: Any) -> None:
    uri = f"duckdb:///{tmp_path}/s.duckdb"
    assert cli(["--store", uri, "instruments", "add", "MARS", "--timezone", "Mars/Olympus"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert line.startswith("error: --timezone: unknown IANA timezone 'Mars/Olympus'")


def test_connect_with_a_bad_setting_raises_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import marketlake
    from marketlake.errors import ConfigError

    monkeypatch.setenv("MARKETLAKE_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError, match="setting MARKETLAKE_LOG_LEVEL: unknown log level"):
        marketlake.connect("duckdb:///:memory:").instruments()


def test_the_top_level_help_loads_no_settings_machinery() -> None:
    """`marketlake --help` reads no settings, so it leaves pydantic (about half of its
    start-up time) unimported."""
    probe = (
        "import sys\n"
        "from marketlake.cli.app import cli\n"
        "assert cli(['--help']) == 0\n"
        "print('loaded:' + ','.join(m for m in ('pydantic', 'marketlake.config') "
        "if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "loaded:", done.stdout[-500:]


# What a command loads is most of its start-up time (bench/bench_startup.py measures it);
# these check the lazy imports, with no timing.
HELP_LEAVES = (
    "click",  # Typer 0.2x carries its own copy
    "asyncio",  # the commands that run event loops import it when they run
    "rich.progress",
    "socket",
    "marketlake.store",
    "sqlalchemy",
    "psycopg",
)
STORE_LEAVES = ("sqlalchemy", "psycopg", "pandas", "fastapi", "marketlake.store.postgres")


def _loaded_after(probe: str, watch: tuple[str, ...]) -> list[str]:
    """The modules of ``watch`` loaded once ``probe`` has run in a fresh interpreter."""
    report = f"print('loaded:' + ','.join(m for m in {watch!r} if m in sys.modules))"
    code = f"{probe}\nimport sys\n{report}\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("loaded:"), done.stdout[-500:]
    return [m for m in line.removeprefix("loaded:").split(",") if m]


def test_the_top_level_help_loads_only_what_it_shows() -> None:
    """`marketlake --help` (the command list) loads neither Click, asyncio, progress bars
    nor anything of the store."""
    probe = "from marketlake.cli.app import cli\nassert cli(['--help']) == 0"
    assert _loaded_after(probe, HELP_LEAVES) == []


def test_the_help_is_the_same_after_building_the_commands_twice(capsys: Capsys) -> None:
    """Typer builds the command tree on every run; the signature each command's two reads
    share (see cli.app._ParamsOnce) leaves the second build's help as the first's."""
    assert cli(["keys", "create", "--help"]) == 0
    first = capsys.readouterr().out
    assert cli(["keys", "create", "--help"]) == 0
    assert capsys.readouterr().out == first
    assert "--scope" in first


def test_commands_on_an_up_to_date_duckdb_store_load_no_sqlalchemy_psycopg_or_pandas(
    stored: str,
) -> None:
    """Opening an existing DuckDB store needs no SQLAlchemy (only creating or upgrading one
    does), no PostgreSQL driver, and binding query parameters imports no pandas: a key
    created, the instruments listed and the last bars printed load none of them."""
    probe = (
        "from marketlake.cli.app import cli\n"
        f"store = {stored!r}\n"
        "assert cli(['--store', store, 'keys', 'create', 'probe', '--json']) == 0\n"
        "assert cli(['--store', store, 'instruments', 'list', '--json']) == 0\n"
        "assert cli(['--store', store, 'bars', 'AAPL', '--tail', '5', '--json']) == 0\n"
        "assert cli(['--store', store, 'keys', 'list', '--json']) == 0"
    )
    assert _loaded_after(probe, STORE_LEAVES) == []


def test_creating_a_duckdb_store_still_builds_its_tables(tmp_path: Any) -> None:
    """The tables come from the SQLAlchemy catalogue, imported when a store is created."""
    from marketlake.store import open_store

    with open_store(f"duckdb:///{tmp_path}/new.duckdb") as store:
        assert store.schema_version() > 0
        assert store.select_rows("api_keys") == []


def test_the_key_commands_load_no_web_framework() -> None:
    """`keys create` needs the key helpers only: importing `marketlake.api.keys` leaves
    FastAPI and the app (about a second of start-up) unimported."""
    probe = (
        "import sys\n"
        "import marketlake.api.keys\n"
        "print('loaded:' + ','.join(m for m in ('fastapi', 'marketlake.api.app') "
        "if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "loaded:", done.stdout[-500:]
