"""Auth: API keys and JWTs, scopes on every write route, keyed reads, rate limits."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from marketlake.api.keys import create_key, list_keys, verify_key
from marketlake.errors import AuthError
from marketlake.store import Store
from tests.api.conftest import bearer
from tests.conftest import service_unavailable

# (method, path, body, status of a caller with enough scope)
WRITE_ROUTES: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("POST", "/api/v1/instruments", {"symbol": "NEWX"}, 201),
    ("PUT", "/api/v1/instruments/NEWY", {"name": "New Y"}, 201),
    ("DELETE", "/api/v1/instruments/AAPL", None, 204),
    (
        "POST",
        "/api/v1/ingest/run",
        {
            "provider": "synthetic",
            "symbols": ["AAPL"],
            "timeframe": "1d",
            "start": "2024-03-01",
            "end": "2024-03-02",
        },
        202,
    ),
]
# the routes of the Python client's calls (api/routes/tasks.py); a bytes body is a file
WRITE_ROUTES += [
    ("POST", "/api/v1/validate/run", {"symbols": ["AAPL"], "timeframes": ["1m"]}, 201),
    ("POST", "/api/v1/aggregate/run", {"symbols": ["AAPL"], "from_tf": "1m", "to": ["1h"]}, 201),
    (
        "POST",
        "/api/v1/repair/run",
        {"symbol": "AAPL", "timeframe": "1m", "provider": "synthetic"},
        201,
    ),
    (
        "POST",
        "/api/v1/import/csv?symbol=UPLOAD&timeframe=1d",
        b"Date,Open,High,Low,Close,Volume\n2024-01-02,10,11,9,10.5,100\n",  # type: ignore[list-item]
        201,
    ),
    (
        "POST",
        "/api/v1/sweep/run",
        {
            "strategy": "sma_cross",
            "symbols": ["AAPL"],
            "timeframe": "1m",
            "grid": {"fast": [3, 5], "slow": [12]},
        },
        201,
    ),
]
# read routes, with MARKETLAKE_API_REQUIRE_KEY_FOR_READS=true
READ_ROUTES: list[tuple[str, str]] = [
    ("GET", "/api/v1/bars?symbols=AAPL,BTCUSDT&timeframe=1m"),
    ("GET", "/api/v1/trades/AAPL"),
    ("GET", "/api/v1/coverage?symbols=AAPL"),
    ("GET", "/api/v1/actions/AAPL"),
]
ADMIN_ROUTES: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("GET", "/api/v1/keys", None, 200),
    ("POST", "/api/v1/keys", {"name": "new", "scopes": ["read"]}, 201),
    ("DELETE", "/api/v1/keys/read-key", None, 204),
]


class Jwks:
    """A local identity provider: an RSA key, its JWKS served over HTTP, and signed tokens."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:8]
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        body = json.dumps({"keys": [public | {"kid": self.kid, "use": "sig", "alg": "RS256"}]})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, *, expires_in: float = 600, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "sub": "user-1",
            "aud": "marketlake",
            "iat": now,
            "exp": now + int(expires_in),
        } | claims
        return jwt.encode(payload, self.private, algorithm="RS256", headers={"kid": self.kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def idp() -> Iterator[Jwks]:
    provider = Jwks()
    yield provider
    provider.close()


def _credentials(case: str, keys: dict[str, str], idp: Jwks) -> dict[str, str]:
    return {
        "no key": {},
        "read key": bearer(keys["read"]),
        "write key": {"X-API-Key": keys["write"]},
        "admin key": bearer(keys["admin"]),
        "revoked key": bearer(keys["revoked"]),
        "expired JWT": bearer(idp.token(expires_in=-120, scope="read write admin")),
        "write JWT": bearer(idp.token(scope="read write")),
        "admin JWT": bearer(idp.token(permissions=["marketlake:admin"])),
        "forged JWT": bearer(Jwks().token(scope="admin")),
        "scopeless JWT": bearer(idp.token(scope="profile email")),
    }[case]


EXPECTED_WRITE = {
    "no key": 401,
    "read key": 403,
    "write key": None,
    "admin key": None,
    "revoked key": 401,
    "expired JWT": 401,
    "write JWT": None,
    "admin JWT": None,
    "forged JWT": 401,
}
EXPECTED_ADMIN = EXPECTED_WRITE | {"write key": 403, "write JWT": 403}


@pytest.mark.parametrize("case", list(EXPECTED_WRITE))
@pytest.mark.parametrize(
    "route",
    WRITE_ROUTES + ADMIN_ROUTES,
    ids=[f"{m} {p}" for m, p, _, _ in WRITE_ROUTES + ADMIN_ROUTES],
)
async def test_auth_matrix_on_every_write_route(
    make_client: Callable[..., Any],
    keys: dict[str, str],
    idp: Jwks,
    case: str,
    route: tuple[str, str, dict[str, Any] | None, int],
) -> None:
    method, path, body, ok = route
    expected = (EXPECTED_ADMIN if route in ADMIN_ROUTES else EXPECTED_WRITE)[case] or ok
    payload: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    async with make_client(api_jwks_url=idp.url, api_jwt_audience="marketlake") as client:
        r = await client.request(method, path, headers=_credentials(case, keys, idp), **payload)
    assert r.status_code == expected, r.text
    if expected in (401, 403):
        assert r.headers["content-type"] == "application/problem+json"
    if expected == 401:
        assert r.headers["www-authenticate"] == 'Bearer realm="marketlake"'


EXPECTED_READ = {
    "no key": 401,
    "scopeless JWT": 403,
    "read key": None,
    "write key": None,
    "revoked key": 401,
    "forged JWT": 401,
}


@pytest.mark.parametrize("case", list(EXPECTED_READ))
@pytest.mark.parametrize("route", READ_ROUTES, ids=[f"{m} {p}" for m, p in READ_ROUTES])
async def test_auth_matrix_on_the_client_read_routes(
    make_client: Callable[..., Any],
    keys: dict[str, str],
    idp: Jwks,
    case: str,
    route: tuple[str, str],
) -> None:
    method, path = route
    async with make_client(
        api_jwks_url=idp.url, api_jwt_audience="marketlake", api_require_key_for_reads=True
    ) as client:
        r = await client.request(method, path, headers=_credentials(case, keys, idp))
    assert r.status_code == (EXPECTED_READ[case] or 200), r.text
    if r.status_code == 200:
        assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"


@pytest.fixture
def make_cli_client(seeded: Store) -> Callable[..., Any]:
    """An app with ``POST /api/v1/cli`` (which only ``marketlake serve`` adds)."""
    from contextlib import asynccontextmanager

    from marketlake.api import create_app
    from marketlake.cli._server import install
    from tests.api.conftest import client_for, settings

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(settings(**overrides), seeded)
        install(app)
        async for client in client_for(app):
            yield client

    return make


# (command line, scope it needs)
CLI_COMMANDS = [
    (["bars", "AAPL", "-t", "1m", "--tail", "2"], "read"),
    (["validate", "AAPL", "-t", "1m"], "write"),
    (["keys", "list"], "admin"),
]
EXPECTED_CLI = {
    "read": {"no key": 401, "scopeless JWT": 403, "read key": 200, "write key": 200,
             "admin key": 200},
    "write": {"no key": 401, "scopeless JWT": 403, "read key": 403, "write key": 200,
              "admin key": 200},
    "admin": {"no key": 401, "scopeless JWT": 403, "read key": 403, "write key": 403,
              "admin key": 200},
}  # fmt: skip


@pytest.mark.parametrize("case", ["no key", "scopeless JWT", "read key", "write key", "admin key"])
@pytest.mark.parametrize("command", CLI_COMMANDS, ids=[c[1] for c in CLI_COMMANDS])
async def test_auth_matrix_on_the_cli_route(
    make_cli_client: Callable[..., Any],
    keys: dict[str, str],
    idp: Jwks,
    case: str,
    command: tuple[list[str], str],
) -> None:
    argv, scope = command
    async with make_cli_client(
        api_jwks_url=idp.url, api_jwt_audience="marketlake", api_require_key_for_reads=True
    ) as client:
        r = await client.post(
            "/api/v1/cli", json={"argv": argv}, headers=_credentials(case, keys, idp)
        )
    assert r.status_code == EXPECTED_CLI[scope][case], r.text
    if r.status_code == 200:
        # frames: (1 stdout | 2 stderr | 3 exit code, 4-byte length, payload); exit 0 last
        assert r.content.endswith(b"\x03\x00\x00\x00\x010")  # the exit code frame: 0
    else:
        assert r.headers["content-type"] == "application/problem+json"


async def test_messages_say_what_is_missing(
    make_client: Callable[..., Any], keys: dict[str, str], idp: Jwks
) -> None:
    async with make_client(api_jwks_url=idp.url, api_jwt_audience="marketlake") as client:
        none = await client.post("/api/v1/instruments", json={"symbol": "X"})
        weak = await client.post(
            "/api/v1/instruments", json={"symbol": "X"}, headers=bearer(keys["read"])
        )
        revoked = await client.get("/api/v1/instruments", headers=bearer(keys["revoked"]))
        expired = await client.get(
            "/api/v1/instruments", headers=bearer(idp.token(expires_in=-120))
        )
    assert none.json()["detail"].startswith("this route needs an API key with scope write")
    assert weak.json()["detail"] == "key read-key has scopes read; this route needs write"
    assert "was revoked" in revoked.json()["detail"]
    assert expired.json()["detail"].startswith("the JWT has expired")


async def test_jwt_without_scope_claims_gets_the_default_scopes(
    make_client: Callable[..., Any], idp: Jwks
) -> None:
    async with make_client(
        api_jwks_url=idp.url, api_jwt_audience="marketlake", api_require_key_for_reads=True
    ) as client:
        token = bearer(idp.token())
        read = await client.get("/api/v1/instruments", headers=token)
        write = await client.post("/api/v1/instruments", json={"symbol": "X"}, headers=token)
        wrong_aud = await client.get(
            "/api/v1/instruments", headers=bearer(idp.token(aud="someone-else"))
        )
    assert read.status_code == 200
    assert write.status_code == 403
    assert wrong_aud.status_code == 401


async def test_jwt_is_refused_when_no_jwks_is_configured(
    client: httpx.AsyncClient, idp: Jwks
) -> None:
    r = await client.get("/api/v1/instruments", headers=bearer(idp.token(scope="read")))
    assert r.status_code == 401
    assert "MARKETLAKE_API_JWKS_URL" in r.json()["detail"]


async def test_unreachable_jwks_is_401_naming_it(
    make_client: Callable[..., Any], idp: Jwks
) -> None:
    async with make_client(api_jwks_url="http://127.0.0.1:1/jwks.json") as client:
        r = await client.get("/api/v1/instruments", headers=bearer(idp.token(scope="read")))
    assert r.status_code == 401
    assert "http://127.0.0.1:1/jwks.json" in r.json()["detail"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-API-Key": "nonsense"}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    ],
)
async def test_keyed_reads_need_a_valid_key(
    make_client: Callable[..., Any], keys: dict[str, str], headers: dict[str, str], status: int
) -> None:
    async with make_client(api_require_key_for_reads=True) as client:
        refused = await client.get("/api/v1/bars/AAPL", headers=headers)
        allowed = await client.get("/api/v1/bars/AAPL", headers={"X-API-Key": keys["read"]})
        health = await client.get("/api/v1/health")
    assert refused.status_code == status
    assert allowed.status_code == 200
    assert health.status_code == 200


async def test_open_reads_still_reject_a_bad_key(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/bars/AAPL", headers=bearer("mlk_0000000000_wrong"))
    assert r.status_code == 401


def test_keys_are_stored_hashed_and_shown_once(seeded: Store) -> None:
    key, plaintext = create_key(seeded, "ci", "write,read")
    rows = seeded.select_rows("api_keys", {"id": key.id})
    assert plaintext.startswith(f"mlk_{key.id}_")
    assert plaintext not in json.dumps(rows, default=str)
    assert key.scopes == ("read", "write")
    assert verify_key(seeded, plaintext).name == "ci"
    assert [k.name for k in list_keys(seeded)] == ["ci"]
    with pytest.raises(AuthError):
        verify_key(seeded, plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B"))


async def test_admin_creates_and_revokes_keys_over_http(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    admin = bearer(keys["admin"])
    made = (
        await client.post("/api/v1/keys", json={"name": "dash", "scopes": ["read"]}, headers=admin)
    ).json()
    assert made["key"].startswith("mlk_")
    assert (await client.get("/api/v1/instruments", headers=bearer(made["key"]))).status_code == 200
    listed = (await client.get("/api/v1/keys", headers=admin)).json()
    assert "key" not in listed[0]
    assert {k["name"] for k in listed} >= {"dash", "read-key"}
    assert (await client.delete(f"/api/v1/keys/{made['id']}", headers=admin)).status_code == 204
    assert (await client.get("/api/v1/instruments", headers=bearer(made["key"]))).status_code == 401
    assert (await client.delete(f"/api/v1/keys/{made['id']}", headers=admin)).status_code == 404
    bad = await client.post("/api/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=admin)
    assert bad.status_code == 422
    assert bad.json()["param"] == "scopes.0"


async def test_rate_limit_answers_429_with_retry_after(
    make_client: Callable[..., Any], keys: dict[str, str]
) -> None:
    async with make_client(api_rate_limit_per_minute=3) as client:
        codes = [(await client.get("/api/v1/health")).status_code for _ in range(5)]
        hits = [await client.get("/api/v1/instruments") for _ in range(4)]
        keyed = await client.get("/api/v1/instruments", headers=bearer(keys["read"]))
    assert codes == [200] * 5  # health is never limited
    assert [r.status_code for r in hits] == [200, 200, 200, 429]
    assert hits[-1].headers["retry-after"] == "20"
    assert hits[-1].json()["detail"] == (
        "rate limit of 3 requests per minute reached; retry in 20 s"
    )
    assert keyed.status_code == 200  # a key has its own budget


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except (redis.RedisError, OSError) as exc:
        service_unavailable("Redis", str(exc))


@pytest.mark.redis
async def test_redis_rate_limit_is_shared_between_apps(make_client: Callable[..., Any]) -> None:
    import redis

    _redis_or_skip()
    prefix = f"marketlake-test-{uuid.uuid4().hex[:8]}:"
    options = {
        "bus": "redis://127.0.0.1:6379/0",
        "api_rate_limit_per_minute": 4,
        "api_rate_limit_prefix": prefix,
    }
    try:
        async with make_client(**options) as one, make_client(**options) as two:
            codes = [
                (await (one if i % 2 else two).get("/api/v1/instruments")).status_code
                for i in range(6)
            ]
            ready = await one.get("/api/v1/ready")
        assert codes[:4] == [200] * 4
        assert codes[4:] == [429, 429]
        assert ready.json()["checks"]["bus"] == "ok"
    finally:
        client = redis.Redis(host="127.0.0.1", port=6379)
        stale = list(client.scan_iter(f"{prefix}*"))
        if stale:
            client.delete(*stale)
        client.close()
