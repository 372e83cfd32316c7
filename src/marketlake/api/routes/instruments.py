"""The instrument registry: ``/instruments`` and ``/instruments/{symbol}``."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Response, status

from marketlake.api.deps import ReadAccess, StoreDep, SymbolDep, WriteAccess, in_thread
from marketlake.api.errors import problem_responses
from marketlake.api.models import InstrumentCreate, InstrumentFields, InstrumentOut
from marketlake.errors import ConflictError, InputError
from marketlake.schema import Instrument
from marketlake.store import Store

router = APIRouter(prefix="/instruments", tags=["instruments"])


def _out(store: Store, instrument: Instrument) -> InstrumentOut:
    return InstrumentOut(
        **instrument.model_dump(), auto_registered=bool(store.auto_registered([instrument.symbol]))
    )


@router.get("", response_model=list[InstrumentOut], summary="List instruments")
async def list_instruments(_: ReadAccess, store: StoreDep) -> list[InstrumentOut]:
    """Every registered instrument, by symbol."""

    def load() -> list[InstrumentOut]:
        auto = store.auto_registered()
        return [
            InstrumentOut(**i.model_dump(), auto_registered=i.symbol in auto)
            for i in store.list_instruments()
        ]

    result: list[InstrumentOut] = await in_thread(load)
    return result


@router.post(
    "",
    response_model=InstrumentOut,
    status_code=status.HTTP_201_CREATED,
    summary="Register an instrument",
    responses=problem_responses(409),
)
async def create_instrument(
    body: InstrumentCreate, _: WriteAccess, store: StoreDep, response: Response
) -> InstrumentOut:
    """Register a new instrument; an existing symbol is a 409 (use PUT to change it)."""
    instrument = Instrument(**body.model_dump())
    try:
        await in_thread(store.add_instrument, instrument)
    except ConflictError:
        path = f"/api/v1/instruments/{quote(instrument.symbol, safe='')}"
        raise ConflictError(
            f"instrument {instrument.symbol} exists already; see it with GET {path} or "
            f"change it with PUT {path}"
        ) from None
    response.headers["Location"] = f"/api/v1/instruments/{quote(instrument.symbol, safe='')}"
    return InstrumentOut(**instrument.model_dump())


@router.get(
    "/{symbol:path}",
    response_model=InstrumentOut,
    summary="One instrument",
    responses=problem_responses(404),
)
async def get_instrument(symbol: SymbolDep, _: ReadAccess, store: StoreDep) -> InstrumentOut:
    """The instrument registered as ``symbol``."""
    result: InstrumentOut = await in_thread(lambda: _out(store, store.instrument(symbol)))
    return result


@router.put(
    "/{symbol:path}",
    response_model=InstrumentOut,
    summary="Create or replace an instrument",
    responses={201: {"description": "Created", "model": InstrumentOut}},
)
async def put_instrument(
    symbol: SymbolDep, body: InstrumentFields, _: WriteAccess, store: StoreDep, response: Response
) -> InstrumentOut:
    """Replace the instrument's fields, or register it (201) when it is new."""
    if body.symbol is not None and body.symbol.strip().upper() != symbol:
        raise InputError(
            f"body symbol {body.symbol!r} is not the path's {symbol}; rename an instrument "
            f"by POST of the new one and DELETE of the old, or leave symbol out",
            param="symbol",
        )
    instrument = Instrument(symbol=symbol, **body.model_dump(exclude={"symbol", "auto_registered"}))

    if await in_thread(store.put_instrument, instrument):
        response.status_code = status.HTTP_201_CREATED
        response.headers["Location"] = f"/api/v1/instruments/{quote(symbol, safe='')}"
    return InstrumentOut(**instrument.model_dump())


@router.delete(
    "/{symbol:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Remove an instrument",
    responses=problem_responses(404),
)
async def delete_instrument(
    symbol: SymbolDep,
    _: WriteAccess,
    store: StoreDep,
    with_data: Annotated[bool, Query(description="Delete its bars and trades too")] = False,
) -> Response:
    """Remove the instrument (and with ``with_data=true`` its stored bars and trades)."""
    await in_thread(store.delete_instrument, symbol, with_data=with_data)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
