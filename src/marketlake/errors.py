"""The MarketLake exception tree.

Every error MarketLake raises on purpose derives from :class:`MarketLakeError`;
the API maps the tree to HTTP problems in one handler (``api/errors.py``) and
the CLI to exit codes in one place (``cli/app.py``).

    MarketLakeError
    ├── InputError             bad input from the user: exit 2, HTTP 422
    │   ├── TimeframeError     an unknown timeframe string
    │   ├── SchemaError        a table whose columns or types do not fit
    │   ├── DataError          rows that break a data rule (CSV lines, OHLC, ...)
    │   └── ConfigError        a bad setting, URI or config file
    ├── NotFoundError          unknown symbol, job, report ...: exit 2, HTTP 404
    ├── ConflictError          an object that already exists: exit 1, HTTP 409
    ├── AuthError              missing or bad credentials: HTTP 401
    │   └── ForbiddenError     a key without the needed scope: HTTP 403
    ├── RateLimitError         too many requests: HTTP 429 with Retry-After
    ├── ProviderError          a data vendor failed or answered nonsense: exit 1, HTTP 502
    │   ├── ProviderAuthError  the vendor rejected our credentials
    │   ├── SymbolNotFoundError the vendor does not know the symbol
    │   └── CircuitOpenError   too many failures in a row; calls are paused
    ├── StoreError             the store failed: exit 1, HTTP 503
    │   ├── StoreLockedError   another process holds the embedded store
    │   └── StoreVersionError  the store's schema is older or newer than this code
    ├── BusError               the event bus (Redis) is unreachable or failed: exit 1, HTTP 503
    └── ServerUnreachableError the MarketLake server does not answer: exit 2, HTTP 502
"""

from __future__ import annotations


class MarketLakeError(Exception):
    """Base of every error MarketLake raises on purpose."""

    exit_code = 1
    http_status = 500
    title = "MarketLake error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(MarketLakeError):
    """Input from the user (arguments, files, request bodies) is unusable."""

    exit_code = 2
    http_status = 422
    title = "Invalid input"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class TimeframeError(InputError):
    """A timeframe string that is not one of the valid forms."""

    title = "Invalid timeframe"


class SchemaError(InputError):
    """A table whose columns or types do not match the canonical schema."""

    title = "Invalid table schema"


class DataError(InputError):
    """Rows that break a data rule; ``problems`` lists each one."""

    title = "Invalid data"

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class ConfigError(InputError):
    """A setting, store URI or configuration file that cannot be used."""

    title = "Invalid configuration"


class NotFoundError(MarketLakeError):
    """The thing asked for does not exist (in the CLI: bad input, exit code 2)."""

    exit_code = 2
    http_status = 404
    title = "Not found"


class ConflictError(MarketLakeError):
    """The thing to create exists already, or the write contradicts stored data."""

    http_status = 409
    title = "Conflict"


class AuthError(MarketLakeError):
    """Credentials are missing or invalid."""

    http_status = 401
    title = "Unauthorized"


class ForbiddenError(AuthError):
    """Credentials are valid but lack the needed scope."""

    http_status = 403
    title = "Forbidden"


class RateLimitError(MarketLakeError):
    """Too many requests; retry after ``retry_after`` seconds."""

    http_status = 429
    title = "Too many requests"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderError(MarketLakeError):
    """A data provider failed or answered something unusable."""

    http_status = 502
    title = "Provider error"


class ProviderAuthError(ProviderError):
    """The provider rejected the configured credentials."""


class SymbolNotFoundError(ProviderError):
    """The provider does not know the symbol."""

    http_status = 404


class CircuitOpenError(ProviderError):
    """The provider failed too often in a row; calls pause until the breaker closes."""

    http_status = 503


class StoreError(MarketLakeError):
    """The store could not do what was asked (unreachable, broken, locked)."""

    http_status = 503
    title = "Store unavailable"


class StoreLockedError(StoreError):
    """Another process holds the embedded store open (DuckDB allows one writer per file)."""

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class ServerUnreachableError(MarketLakeError):
    """The MarketLake server the CLI or client works through does not answer."""

    exit_code = 2
    http_status = 502
    title = "Server unreachable"


class StoreVersionError(StoreError):
    """The store's schema version does not match this version of MarketLake."""


class BusError(MarketLakeError):
    """The event bus (Redis Streams) is unreachable or answered an error.

    Not a :class:`StoreError`: the bus failing says nothing about the store, and code
    that retries or reports store failures must not swallow bus failures (or the reverse).
    """

    http_status = 503
    title = "Bus unavailable"
