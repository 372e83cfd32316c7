"""Request and response models of the REST API (they are also its OpenAPI schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from marketlake.schema import AssetClass, Instrument

TS_EXAMPLE = "2024-03-04T14:30:00+00:00"


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    version: str = Field(examples=["0.1.0"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    checks: dict[str, str] = Field(examples=[{"store": "ok", "bus": "memory:// (in-process)"}])


class InstrumentOut(Instrument):
    """A registered instrument."""

    auto_registered: bool = Field(False, description="Registered with defaults by an ingest")


class InstrumentFields(BaseModel):
    """The fields of an instrument (the body of PUT); the symbol comes from the path."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field("", max_length=200, examples=["Apple Inc."])
    asset_class: AssetClass = "stock"
    exchange: str = Field("", max_length=32, examples=["XNAS"])
    currency: str = Field("USD", max_length=16, examples=["USD"])
    timezone: str = Field("America/New_York", max_length=64, examples=["America/New_York"])
    active: bool = True
    symbol: str | None = Field(
        None,
        max_length=64,
        description="Optional; when given (as GET returns it) it must be the path's symbol",
    )
    auto_registered: bool | None = Field(
        None, description="Read-only; accepted (as GET returns it) and ignored"
    )


class InstrumentCreate(Instrument):
    """A new instrument (the body of POST)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("symbol", mode="before")
    @classmethod
    def _upper_symbol(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError('symbol must be a string such as "AAPL"')
        try:
            return Instrument(symbol=value).symbol
        except ValidationError as exc:
            raise ValueError(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None


class Bar(BaseModel):
    """One bar; ``ts`` is its open time in UTC."""

    ts: datetime = Field(examples=[TS_EXAMPLE])
    open: float = Field(examples=[172.5])
    high: float = Field(examples=[172.9])
    low: float = Field(examples=[172.31])
    close: float = Field(examples=[172.77])
    volume: float = Field(examples=[184210.0])
    trades: int | None = Field(None, examples=[1532])
    vwap: float | None = Field(None, examples=[172.61])
    source: str = Field(examples=["synthetic"])


class BarsPage(BaseModel):
    """A page of bars; pass ``next_cursor`` as ``cursor`` for the next page (null at the end)."""

    symbol: str = Field(examples=["AAPL"])
    timeframe: str = Field(examples=["1m"])
    count: int = Field(examples=[100])
    next_cursor: str | None = Field(examples=["WyJBQVBMIiwgIjIwMjQtMDMtMDRUMTY6MDk6MDArMDA6MDAiXQ"])
    bars: list[Bar]


class LatestBar(Bar):
    symbol: str = Field(examples=["AAPL"])
    timeframe: str = Field(examples=["1m"])


class LatestPrice(BaseModel):
    """The newest known price: the last trade, or the close of the newest bar."""

    symbol: str = Field(examples=["BTCUSDT"])
    price: float = Field(examples=[67012.5])
    ts: datetime = Field(
        examples=[TS_EXAMPLE],
        description="When the price was current: the trade's time, a final bar's end, a "
        "forming bar's start (never the time of the request)",
    )
    source: str = Field(examples=["bar"], description="trade or bar")
    timeframe: str | None = Field(None, examples=["1m"], description="For a bar: its timeframe")
    bar_ts: datetime | None = Field(
        None, examples=[TS_EXAMPLE], description="For a bar: its own time (its start)"
    )
    final: bool = Field(
        True,
        examples=[True],
        description="false for a bar that has not ended yet (its close may still change)",
    )


class PricePoint(BaseModel):
    ts: datetime = Field(examples=[TS_EXAMPLE])
    price: float = Field(examples=[172.77])


class PriceSeries(BaseModel):
    """The newest closes of a symbol, oldest first."""

    symbol: str = Field(examples=["AAPL"])
    timeframe: str = Field(examples=["1m"])
    prices: list[PricePoint]


class IngestRequest(BaseModel):
    """An ingest job: provider, symbols, timeframe and a range (start/end or period)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "provider": "synthetic",
                    "symbols": ["AAPL", "BTCUSDT"],
                    "timeframe": "1m",
                    "start": "2024-03-04",
                    "end": "2024-03-06",
                }
            ]
        },
    )

    provider: str = Field(examples=["synthetic"])
    symbols: list[str] = Field(min_length=1, max_length=500, examples=[["AAPL", "BTCUSDT"]])
    timeframe: str = Field("1d", examples=["1m"])
    start: str | None = Field(None, examples=["2024-03-04"], description="Inclusive, ISO, UTC")
    end: str | None = Field(None, examples=["2024-03-06"], description="Exclusive; default now")
    period: str | None = Field(None, examples=["7d"], description="Instead of start: 7d, 1mo …")


class JobAccepted(BaseModel):
    job_id: str = Field(examples=["3f9a1c2b7d4e"])
    status: str = Field(examples=["pending"])
    url: str = Field(examples=["/api/v1/jobs/3f9a1c2b7d4e"])


class JobOut(BaseModel):
    """A recorded job with its per-symbol counts."""

    id: str = Field(examples=["3f9a1c2b7d4e"])
    kind: str = Field(examples=["ingest"])
    status: str = Field(
        examples=["succeeded"],
        description="pending, running, succeeded, partial, failed, cancelled, or interrupted "
        "(its process stopped: killed or crashed; the summary's rows_committed says what "
        "it wrote)",
    )
    params: dict[str, Any] = Field(examples=[{"provider": "synthetic", "symbols": ["AAPL"]}])
    summary: dict[str, Any] = Field(examples=[{"symbols": [{"symbol": "AAPL", "inserted": 780}]}])
    error: str | None = None
    created_at: datetime | None = Field(None, examples=[TS_EXAMPLE])
    started_at: datetime | None = None
    finished_at: datetime | None = None


class QualityFinding(BaseModel):
    rule: str = Field(examples=["ohlc"])
    severity: str = Field(examples=["error"])
    symbol: str = Field(examples=["AAPL"])
    timeframe: str = Field(examples=["1m"])
    ts: datetime | None = Field(None, examples=[TS_EXAMPLE])
    end_ts: datetime | None = None
    values: Any = Field(None, examples=[{"high": 9.5, "low": 10.1}])
    message: str = Field(examples=["high 9.5 is below low 10.1"])


class QualityReportSummary(BaseModel):
    id: str = Field(examples=["r-20240304-1"])
    job_id: str | None = None
    scope: Any = Field(examples=[{"symbols": ["AAPL"], "timeframe": "1m"}])
    summary: Any = Field(examples=[{"findings": 3, "score": 0.998}])
    created_at: datetime | None = Field(None, examples=[TS_EXAMPLE])


class QualityReportOut(QualityReportSummary):
    findings: list[QualityFinding]
    findings_total: int = Field(examples=[3])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=100, examples=["dashboard"])
    scopes: list[Literal["read", "write", "admin"]] = Field(min_length=1, examples=[["read"]])


class KeyOut(BaseModel):
    id: str = Field(examples=["a1b2c3d4e5"])
    name: str = Field(examples=["dashboard"])
    scopes: list[str] = Field(examples=[["read"]])
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    active: bool = True


class KeyCreated(KeyOut):
    key: str = Field(
        description="The key itself; shown only this once", examples=["mlk_a1b2c3d4e5_Zk3…"]
    )
