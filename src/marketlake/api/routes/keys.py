"""API keys over HTTP (scope ``admin``): ``GET/POST /keys``, ``DELETE /keys/{id}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from marketlake.api import keys
from marketlake.api.deps import AdminAccess, ContextDep, in_thread
from marketlake.api.errors import problem_responses
from marketlake.api.models import KeyCreate, KeyCreated, KeyOut

router = APIRouter(prefix="/keys", tags=["keys"])


@router.get("", response_model=list[KeyOut], summary="List API keys")
async def list_keys(_: AdminAccess, ctx: ContextDep) -> list[KeyOut]:
    """Every key (never its secret), revoked ones included."""
    found: list[keys.ApiKey] = await in_thread(keys.list_keys, ctx.store)
    return [KeyOut(**k.as_dict()) for k in found]


@router.post(
    "",
    response_model=KeyCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key",
    responses=problem_responses(409, 422),
)
async def create_key(body: KeyCreate, _: AdminAccess, ctx: ContextDep) -> KeyCreated:
    """Create a key; the response holds the key itself, which is never shown again."""
    key, plaintext = await in_thread(keys.create_key, ctx.store, body.name, body.scopes)
    return KeyCreated(**key.as_dict(), key=plaintext)


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Revoke an API key",
    responses=problem_responses(404),
)
async def revoke_key(
    key_id: Annotated[str, Path(max_length=100, examples=["a1b2c3d4e5"])],
    _: AdminAccess,
    ctx: ContextDep,
) -> Response:
    """Revoke the key with this id (or name); it stops working at once."""
    await in_thread(keys.revoke_key, ctx.store, key_id)
    ctx.auth.forget()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
