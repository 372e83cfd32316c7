"""The alternatives the API benchmark compares against: plain FastAPI apps serving 100 bars.

``dicts_app``: 100 prebuilt bars as Python dicts through FastAPI's default JSON response
(what a typical FastAPI service does). ``orjson_app``: the same bars as prebuilt orjson
bytes in a plain ``Response`` (the fastest a FastAPI endpoint can be).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Response

from marketlake.providers.synthetic import generate_bars


def _rows() -> list[dict[str, Any]]:
    table = generate_bars(
        "BTCUSDT", "1m", datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 4, 1, 40, tzinfo=UTC)
    )
    return [
        {k: v for k, v in row.items() if k not in ("symbol", "timeframe")}
        for row in table.to_pylist()
    ]


def dicts_app() -> FastAPI:
    app = FastAPI()
    rows = _rows()

    @app.get("/bars/{symbol}")
    async def bars(symbol: str, limit: int = 100):  # type: ignore[no-untyped-def]
        # no return annotation: FastAPI's default path (jsonable_encoder + JSONResponse)
        return {"symbol": symbol, "timeframe": "1m", "bars": rows[:limit]}

    return app


def orjson_app() -> FastAPI:
    app = FastAPI()
    body = orjson.dumps({"symbol": "BTCUSDT", "timeframe": "1m", "bars": _rows()})

    @app.get("/bars/{symbol}")
    async def bars(symbol: str, limit: int = 100) -> Response:
        return Response(body, media_type="application/json")

    return app
