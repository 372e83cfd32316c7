"""Who is calling: API keys and (optionally) JWTs verified against a JWKS URL.

A credential arrives as ``Authorization: Bearer <token>`` or ``X-API-Key: <key>``.
Tokens shaped like a JWT (three dot-separated parts) are verified with the keys
published at ``MARKETLAKE_API_JWKS_URL`` (Auth0, Keycloak, Firebase … all
publish one); anything else is looked up as a MarketLake API key. A JWT's
scopes come from its ``scope`` (space-separated), ``scp`` or ``permissions``
claim, keeping only ``read``, ``write`` and ``admin``; a token without any of
them gets ``MARKETLAKE_API_JWT_DEFAULT_SCOPES``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import jwt

from marketlake.api.keys import SCOPES, expand_scopes, verify_key
from marketlake.config import Settings
from marketlake.errors import AuthError, ForbiddenError
from marketlake.store.base import Store


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller (or the anonymous one when reads are open)."""

    id: str
    kind: str  # "key" | "jwt" | "anonymous"
    scopes: frozenset[str]
    name: str = ""

    def require(self, scope: str) -> None:
        """Raise unless this caller holds ``scope``."""
        if scope in self.scopes:
            return
        if self.kind == "anonymous":
            raise AuthError(
                f"this route needs an API key with scope {scope}: send "
                "`Authorization: Bearer <key>` or `X-API-Key: <key>`"
            )
        held = ", ".join(sorted(self.scopes)) or "none"
        raise ForbiddenError(
            f"{self.kind} {self.name or self.id} has scopes {held}; this route needs {scope}"
        )


ANONYMOUS = Principal("anonymous", "anonymous", frozenset({"read"}))
NOBODY = Principal("anonymous", "anonymous", frozenset())
# the caller holding the token of the server's discovery file (same user, same machine)
LOCAL = Principal("local", "local", frozenset(SCOPES), "local CLI")


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("mlk_")


class Authenticator:
    """Turns a presented credential into a :class:`Principal`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        self._jwks: jwt.PyJWKClient | None = None
        if settings.api_jwks_url:
            self._jwks = jwt.PyJWKClient(
                settings.api_jwks_url,
                cache_keys=True,
                lifespan=300,
                timeout=int(max(1, settings.http_timeout_s)),
            )

    def anonymous(self) -> Principal:
        return NOBODY if self.settings.api_require_key_for_reads else ANONYMOUS

    def authenticate_cached(self, token: str) -> Principal | None:
        """The caller of a recently verified API key, without touching the store."""
        return None if looks_like_jwt(token) else self._cached(token.strip())

    def authenticate(self, store: Store, token: str) -> Principal:
        """Verify ``token`` (blocking: may query the store or fetch the JWKS)."""
        token = token.strip()
        if looks_like_jwt(token):
            return self._verify_jwt(token)
        cached = self._cached(token)
        if cached is not None:
            return cached
        key = verify_key(store, token)
        principal = Principal(key.id, "key", expand_scopes(key.scopes), key.name)
        if self.settings.api_key_cache_s > 0:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[token] = (time.monotonic() + self.settings.api_key_cache_s, principal)
        return principal

    def forget(self) -> None:
        """Drop remembered keys (after a revocation through the API)."""
        with self._lock:
            self._cache.clear()

    def _cached(self, token: str) -> Principal | None:
        hit = self._cache.get(token)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def _verify_jwt(self, token: str) -> Principal:
        if self._jwks is None:
            raise AuthError(
                "JWT bearer tokens are not enabled; set MARKETLAKE_API_JWKS_URL or "
                "send a MarketLake API key"
            )
        try:
            signing_key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                signing_key.key,
                algorithms=["RS256", "RS384", "RS512", "ES256", "ES384"],
                audience=self.settings.api_jwt_audience,
                issuer=self.settings.api_jwt_issuer,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": bool(self.settings.api_jwt_audience),
                },
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(
                "the JWT has expired; get a fresh token from your identity provider"
            ) from None
        except jwt.PyJWKClientError as exc:
            raise AuthError(
                f"cannot verify the JWT against {self.settings.api_jwks_url}: {exc}"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the JWT is not valid: {exc}") from None
        return Principal(
            str(claims["sub"]),
            "jwt",
            expand_scopes(self._scopes(claims)),
            str(claims.get("email") or claims["sub"]),
        )

    def _scopes(self, claims: dict[str, Any]) -> set[str]:
        found: list[str] = []
        for claim in ("scope", "scp", "permissions"):
            value = claims.get(claim)
            if isinstance(value, str):
                found += value.split()
            elif isinstance(value, list):
                found += [str(v) for v in value]
        scopes = {s.removeprefix("marketlake:") for s in found} & set(SCOPES)
        if not any(c in claims for c in ("scope", "scp", "permissions")):
            scopes = set(self.settings.api_jwt_default_scopes) & set(SCOPES)
        return scopes
