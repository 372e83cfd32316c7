"""``GET /portfolio``: the positions of ``config/portfolio.yml`` at the latest prices."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from marketlake.api.deps import ReadAccess, SettingsDep, StoreDep, in_thread
from marketlake.api.routes.metrics import read_metrics
from marketlake.stream.portfolio import Portfolio

router = APIRouter(tags=["portfolio"])


class PositionValue(BaseModel):
    """One position and its unrealized profit or loss (None until a price is known)."""

    symbol: str = Field(examples=["BTCUSDT"])
    quantity: float = Field(examples=[0.5])
    average_price: float = Field(examples=[60000.0])
    price: float | None = Field(examples=[67012.5])
    cost: float = Field(examples=[30000.0])
    market_value: float | None = Field(examples=[33506.25])
    unrealized_pnl: float | None = Field(examples=[3506.25])
    unrealized_pnl_pct: float | None = Field(examples=[11.69])


class PortfolioOut(BaseModel):
    positions: list[PositionValue]
    total_cost: float
    total_market_value: float = Field(description="Of the positions with a known price")
    total_unrealized_pnl: float = Field(description="Of the positions with a known price")


@router.get("/portfolio", response_model=PortfolioOut, summary="Positions and unrealized P&L")
async def portfolio(_: ReadAccess, store: StoreDep, settings: SettingsDep) -> PortfolioOut:
    """Each position valued at the latest price the analytics saw (``metrics`` price)."""
    held = Portfolio.load(settings.config_dir / "portfolio.yml")
    metrics = await in_thread(read_metrics, store)
    prices = {m.symbol: m.metrics["price"] for m in metrics if m.metrics.get("price") is not None}
    return PortfolioOut(**held.valuation(prices))
