"""API keys: created once, shown once, stored only as a SHA-256 hash.

A key looks like ``mlk_<id>_<secret>``: the 10-character ``id`` finds the row
in ``api_keys``; the whole key's SHA-256 is compared in constant time. The
secret carries 256 random bits, so a fast hash is as safe as a slow one here
and keeps every keyed request cheap. Scopes are ``read``, ``write`` and
``admin``; ``admin`` implies ``write``, which implies ``read``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from marketlake.errors import AuthError, ConflictError, InputError, NotFoundError
from marketlake.schema import utcnow
from marketlake.store.base import Store

SCOPES = ("read", "write", "admin")
KEY_PREFIX = "mlk_"
_IMPLIED = {"admin": {"admin", "write", "read"}, "write": {"write", "read"}, "read": {"read"}}


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime | None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "active": self.active,
        }


def parse_scopes(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"read,write"`` → ``("read", "write")``; unknown scopes are an input error."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = [s.strip().lower() for s in items if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise InputError(
            f"scope {', '.join(unknown) or '(none)'} is not valid; use a comma-separated "
            f"list of {', '.join(SCOPES)}",
            param="scope",
        )
    return tuple(s for s in SCOPES if s in scopes)


def expand_scopes(scopes: tuple[str, ...] | list[str] | set[str]) -> frozenset[str]:
    """Scopes with what they imply (admin ⊇ write ⊇ read)."""
    return frozenset(s for scope in scopes for s in _IMPLIED.get(scope, set()))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    store: Store, name: str, scopes: str | list[str] | tuple[str, ...]
) -> tuple[ApiKey, str]:
    """Store a new key; return it and its plaintext (the only time the secret is seen)."""
    name = name.strip()
    if not name:
        raise InputError("a key needs a name, e.g. `marketlake keys create ci`", param="name")
    parsed = parse_scopes(scopes)
    key_id = secrets.token_hex(5)
    plaintext = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    created = utcnow()
    with store.serialized(f"api_keys:{name}"):  # one active key per name, even in a race
        if any(row["revoked_at"] is None for row in store.api_keys(name=name)):
            raise ConflictError(
                f"an active key named {name!r} exists already; revoke it or pick another name"
            )
        store.add_api_key(
            key_id,
            name=name,
            key_hash=hash_key(plaintext),
            scopes=",".join(parsed),
            created_at=created,
        )
    return ApiKey(key_id, name, parsed, created), plaintext


def list_keys(store: Store, *, include_revoked: bool = True) -> list[ApiKey]:
    keys = [_key(row) for row in store.api_keys()]
    return keys if include_revoked else [k for k in keys if k.active]


def revoke_key(store: Store, id_or_name: str) -> ApiKey:
    """Revoke the active key with this id or name; it stops working at once."""
    rows = [r for r in store.api_keys() if id_or_name in (r["id"], r["name"])]
    active = [r for r in rows if r["revoked_at"] is None]
    if not active:
        raise NotFoundError(
            f"no active API key {id_or_name!r}; list keys with `marketlake keys list`"
            if not rows
            else f"API key {id_or_name!r} is revoked already"
        )
    row = active[0]
    store.revoke_api_key(row["id"], utcnow())
    return _key({**row, "revoked_at": utcnow()})


def verify_key(store: Store, plaintext: str) -> ApiKey:
    """The active key ``plaintext`` belongs to; :class:`AuthError` otherwise."""
    key_id = _key_id(plaintext)
    rows = store.api_keys(key_id=key_id) if key_id else []
    if not rows or not hmac.compare_digest(rows[0]["hash"], hash_key(plaintext)):
        raise AuthError("API key is not valid; create one with `marketlake keys create NAME`")
    key = _key(rows[0])
    if not key.active:
        raise AuthError(f"API key {key.id} ({key.name}) was revoked; create a new one")
    return key


def _key_id(plaintext: str) -> str | None:
    if not plaintext.startswith(KEY_PREFIX):
        return None
    key_id, _, secret = plaintext[len(KEY_PREFIX) :].partition("_")
    return key_id if key_id and secret else None


def _key(row: dict[str, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        scopes=tuple(s for s in str(row["scopes"]).split(",") if s),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )
