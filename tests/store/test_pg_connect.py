"""Store URIs and connection failures: one clear line each, the right exit code."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from marketlake.cli.app import cli
from marketlake.config import redact
from marketlake.errors import ConfigError, StoreError
from marketlake.store import open_store
from marketlake.store.pgconn import parse_uri
from marketlake.store.postgres import PostgresStore
from tests.conftest import PG


def test_both_schemes_open_the_postgres_backend() -> None:
    assert PostgresStore.supports_uri("postgresql://u@h/db")
    assert PostgresStore.supports_uri("postgres://u@h/db")
    assert not PostgresStore.supports_uri("duckdb:///x.duckdb")


def test_uri_options_are_parsed_and_kept_away_from_libpq() -> None:
    options = parse_uri(
        "postgres://bob:s3cret@db.example:6543/market?schema=lake&pool_max=20"
        "&pool_min=2&write_retries=5&sslmode=require"
    )
    assert (options.schema, options.pool_min, options.pool_max, options.write_retries) == (
        "lake",
        2,
        20,
        5,
    )
    assert options.params["sslmode"] == "require"
    assert options.params["port"] == "6543"
    assert "schema" not in options.conninfo
    assert "pool_max" not in options.conninfo
    assert (
        options.display == "postgres://bob:***@db.example:6543/market?schema=lake&pool_max=20"
        "&pool_min=2&write_retries=5&sslmode=require"
    )
    assert options.where == "db.example:6543"
    assert options.connect_kwargs() == {"options": "-c search_path=lake,public -c TimeZone=UTC"}


def test_defaults_are_the_public_schema_and_a_small_pool() -> None:
    options = parse_uri("postgresql://alice@localhost/market")
    assert (options.schema, options.pool_min, options.pool_max, options.write_retries) == (
        "public",
        1,
        8,
        3,
    )
    assert options.connect_kwargs() == {"options": "-c search_path=public -c TimeZone=UTC"}


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("postgresql://u@h:99999/db", "not valid"),
        ("postgresql://u@h:port/db", "not valid"),
        ("postgresql://u@h/db?schema=Bad-Name", "schema 'Bad-Name' must be lower-case"),
        ("postgresql://u@h/db?pool_max=lots", "pool_max='lots' must be a whole number"),
        ("postgresql://u@h/db?pool_min=5&pool_max=2", "pool_max 2 is below pool_min 5"),
        ("postgresql://u@h/db?nonsense=1", "invalid URI query parameter"),
    ],
)
def test_a_bad_uri_is_a_config_error_saying_what_is_wrong(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_uri(uri)


def test_passwords_never_appear_in_messages() -> None:
    assert redact("postgresql://bob:hunter2@h/db") == "postgresql://bob:***@h/db"
    assert redact("postgresql://bob@h/db") == "postgresql://bob@h/db"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_server_that_is_down_is_a_store_error() -> None:
    uri = f"postgresql://postgres:pw@127.0.0.1:{_free_port()}/test"
    with pytest.raises(
        StoreError,
        match=r"cannot reach PostgreSQL at 127\.0\.0\.1:\d+ "
        r"\(connection refused\): start the server",
    ) as info:
        open_store(uri)
    assert "pw" not in info.value.message


@pytest.mark.postgres
def test_a_missing_database_is_a_config_error_with_the_fix() -> None:
    PG.connect()
    with pytest.raises(
        ConfigError,
        match=r"database 'no_such_db_ml' does not exist on PostgreSQL "
        r"at 127\.0\.0\.1:5432: create it \(createdb -h 127\.0\.0\.1 -U postgres "
        r"no_such_db_ml\)",
    ):
        open_store("postgresql://postgres@127.0.0.1:5432/no_such_db_ml")


@pytest.mark.postgres
def test_an_unknown_user_is_a_config_error() -> None:
    PG.connect()
    with pytest.raises(ConfigError, match="user 'nobody_ml' does not exist"):
        open_store("postgresql://nobody_ml@127.0.0.1:5432/test")


class _PasswordRejectingServer:
    """Speaks just enough of the PostgreSQL wire protocol to refuse a password."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self._reject(conn)

    @staticmethod
    def _reject(conn: socket.socket) -> None:
        while True:  # SSL and GSS encryption requests are declined with "N"
            length, code = struct.unpack("!ii", conn.recv(8))
            if code in (80877103, 80877104):
                conn.sendall(b"N")
                continue
            conn.recv(length - 8)
            break
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # cleartext password, please
        conn.recv(1024)
        fields = b'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "bob"\0\0'
        conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def rejecting_server() -> Iterator[_PasswordRejectingServer]:
    server = _PasswordRejectingServer()
    yield server
    server.close()


def test_a_wrong_password_is_a_config_error(rejecting_server: _PasswordRejectingServer) -> None:
    uri = f"postgresql://bob:wrong@127.0.0.1:{rejecting_server.port}/market?sslmode=disable"
    with pytest.raises(
        ConfigError,
        match=rf"PostgreSQL at 127\.0\.0\.1:{rejecting_server.port} "
        r"rejected the password of user 'bob': fix the store URI",
    ):
        open_store(uri)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exit_codes_follow_the_kind_of_failure(
    capsys: pytest.CaptureFixture[str], rejecting_server: _PasswordRejectingServer
) -> None:
    down = f"postgresql://postgres@127.0.0.1:{_free_port()}/test"
    code, _, err = _run(capsys, "--store", down, "instruments", "list")
    assert code == 1
    assert err.count("\n") == 1
    assert "cannot reach PostgreSQL" in err
    wrong = f"postgresql://bob:x@127.0.0.1:{rejecting_server.port}/m?sslmode=disable"
    code, _, err = _run(capsys, "--store", wrong, "instruments", "list")
    assert code == 2
    assert "rejected the password of user 'bob'" in err
    code, _, err = _run(capsys, "--store", "postgresql://u@h:port/db", "instruments", "list")
    assert code == 2
    assert "is not valid" in err


def test_doctor_explains_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    down = f"postgresql://postgres@127.0.0.1:{_free_port()}/test"
    code, out, _ = _run(capsys, "--store", down, "doctor", "--json")
    assert code == 1
    import json

    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert checks["store"]["status"] == "FAIL"
    assert "cannot reach PostgreSQL" in checks["store"]["detail"]
    assert "start the server" in checks["store"]["detail"]


def test_libpq_options_in_the_uri_keep_their_spaces() -> None:
    options = parse_uri("postgresql://u@h/db?options=-c%20lock_timeout%3D5000")
    assert options.params["options"] == "-c lock_timeout=5000"
    assert options.connect_kwargs() == {
        "options": "-c lock_timeout=5000 -c search_path=public -c TimeZone=UTC"
    }


@pytest.mark.postgres
def test_a_setting_the_server_refuses_is_a_config_error() -> None:
    PG.connect()
    with pytest.raises(
        ConfigError,
        match=r"refused a setting of the store URI \(unrecognized "
        r'configuration parameter "no_such_setting"\)',
    ):
        open_store("postgresql://postgres@127.0.0.1:5432/test?options=-c%20no_such_setting%3D1")
