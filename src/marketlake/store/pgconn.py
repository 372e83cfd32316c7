"""PostgreSQL connection settings from a store URI, and connection errors users can act on.

``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME&pool_max=N&...]``:
besides the libpq parameters (``sslmode``, ``connect_timeout``, ``application_name``
…) the query string takes MarketLake's own ``schema`` (where the tables live,
default ``public``), ``pool_min``/``pool_max`` (connection pool size) and
``write_retries`` (how often a failed write batch is retried).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from marketlake.config import redact
from marketlake.errors import ConfigError, MarketLakeError, StoreError, StoreVersionError

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_OWN_PARAMS = ("schema", "pool_min", "pool_max", "write_retries")
URI_HELP = "use postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME]"


@dataclass(frozen=True, slots=True)
class PgOptions:
    """Everything needed to connect, parsed from a store URI."""

    conninfo: str
    display: str  # the URI with the password masked, for messages
    schema: str = "public"
    pool_min: int = 1
    pool_max: int = 8
    write_retries: int = 3
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        host = self.params.get("host") or "localhost"
        return f"{host}:{self.params.get('port') or 5432}"

    @property
    def user(self) -> str:
        return str(self.params.get("user") or "")

    @property
    def dbname(self) -> str:
        return str(self.params.get("dbname") or self.user)

    def connect_kwargs(self) -> dict[str, Any]:
        """Session settings every connection gets: search path and UTC."""
        path = self.schema if self.schema == "public" else f"{self.schema},public"
        options = f"-c search_path={path} -c TimeZone=UTC"
        extra = self.params.get("options")
        return {"options": f"{extra} {options}" if extra else options}


def _int_param(own: dict[str, str], name: str, default: int, low: int, display: str) -> int:
    raw = own.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= 1000:
        raise ConfigError(
            f"store URI {display}: {name}={raw!r} must be a whole number from {low} to 1000"
        )
    return int(raw)


def parse_uri(uri: str) -> PgOptions:
    """Parse and check a ``postgresql://`` or ``postgres://`` store URI."""
    display = redact(uri)
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"store URI {display} is not valid ({exc}); {URI_HELP}") from None
    if parts.scheme not in ("postgresql", "postgres") or (not parts.netloc and not parts.path):
        raise ConfigError(f"store URI {display} is not valid; {URI_HELP}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in _OWN_PARAMS}
    rest = [(k, v) for k, v in query if k not in _OWN_PARAMS]
    query_text = urlencode(rest, quote_via=quote)  # libpq decodes %20, not "+"
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, query_text, ""))
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"store URI {display} is not valid ({_first_line(exc)}); {URI_HELP}"
        ) from None
    if port is not None:
        params["port"] = str(port)
    schema = own.get("schema", "public")
    if not _SCHEMA_RE.match(schema):
        raise ConfigError(
            f"store URI {display}: schema {schema!r} must be lower-case letters, "
            "digits and _ (starting with a letter or _)"
        )
    pool_min = _int_param(own, "pool_min", 1, 0, display)
    pool_max = _int_param(own, "pool_max", max(8, pool_min), 1, display)
    if pool_max < pool_min:
        raise ConfigError(f"store URI {display}: pool_max {pool_max} is below pool_min {pool_min}")
    return PgOptions(
        conninfo=conninfo,
        display=display,
        schema=schema,
        pool_min=pool_min,
        pool_max=pool_max,
        write_retries=_int_param(own, "write_retries", 3, 0, display),
        params=params,
    )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def connect_error(exc: psycopg.Error, options: PgOptions) -> MarketLakeError:
    """Turn a failed connection attempt into one line saying what to fix.

    Settings the user must correct (credentials, database, role, host name) are
    :class:`ConfigError` (exit 2); a server that is down or unreachable is a
    :class:`StoreError` (exit 1).
    """
    text = " ".join(str(exc).split())
    where = f"PostgreSQL at {options.where}"
    fix = "fix the store URI (--store or MARKETLAKE_STORE)"
    if "password authentication failed" in text or "no password supplied" in text:
        return ConfigError(f"{where} rejected the password of user {options.user!r}: {fix}")
    if re.search(r'database ".*" does not exist', text):
        return ConfigError(
            f"database {options.dbname!r} does not exist on {where}: create it "
            f"(createdb -h {options.where.split(':')[0]} -U {options.user or 'USER'} "
            f"{options.dbname}) or {fix}"
        )
    if re.search(r'role ".*" does not exist', text):
        return ConfigError(
            f"user {options.user!r} does not exist on {where}: create the role or {fix}"
        )
    if "resolve host" in text or "could not translate host name" in text:
        return ConfigError(f"cannot resolve the host of {options.display}: {fix}")
    if "unrecognized configuration parameter" in text or "invalid value for parameter" in text:
        return ConfigError(
            f"{where} refused a setting of the store URI "
            f"({_first_line(exc).split('FATAL:')[-1].strip()}): {fix}"
        )
    if "invalid integer value" in text or "invalid connection option" in text:
        return ConfigError(
            f"store URI {options.display} is not valid ({_first_line(exc)}); {URI_HELP}"
        )
    reason = (
        "connection refused"
        if "refused" in text
        else ("timed out" if "timeout expired" in text else _first_line(exc))
    )
    return StoreError(
        f"cannot reach {where} ({reason}): start the server, or check host and "
        f"port in the store URI {options.display}"
    )


def probe(options: PgOptions, timeout_s: float = 5.0) -> psycopg.Connection[Any]:
    """Open one connection now, so that a bad URI or a down server fails with a clear line."""
    kwargs: dict[str, Any] = options.connect_kwargs()
    if "connect_timeout" not in options.params:
        kwargs["connect_timeout"] = max(1, round(timeout_s))
    try:
        return psycopg.connect(options.conninfo, **kwargs)
    except psycopg.Error as exc:
        raise connect_error(exc, options) from None


def version_of(conn: psycopg.Connection[Any], schema: str) -> int:
    """The MarketLake schema version of ``schema`` (its Alembic revision; 0 if none)."""
    row = conn.execute("SELECT to_regclass(%s)", [f"{schema}.alembic_version"]).fetchone()
    if row is None or row[0] is None:
        return 0
    found = conn.execute(f'SELECT version_num FROM "{schema}".alembic_version').fetchone()
    if found is None:
        return 0
    try:
        return int(found[0])
    except ValueError:
        raise StoreVersionError(
            f"schema {schema} carries Alembic revision {found[0]!r}, which "
            "is not a MarketLake revision"
        ) from None
