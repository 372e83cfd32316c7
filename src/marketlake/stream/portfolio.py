"""The portfolio: positions of ``config/portfolio.yml`` valued at the latest prices.

    positions:
      - {symbol: BTCUSDT, quantity: 0.5, average_price: 60000}

Unrealized P&L is ``(price - average_price) * quantity`` (negative quantities
are short positions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from marketlake.errors import ConfigError
from marketlake.schema import normalize_symbol


class Position(BaseModel):
    """A holding: ``quantity`` (negative for short) bought at ``average_price``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbol: str
    quantity: float
    average_price: float = Field(gt=0)

    @field_validator("symbol", mode="before")
    @classmethod
    def _symbol(cls, value: object) -> str:
        return normalize_symbol(str(value))


class _PortfolioFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    positions: list[Position] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Portfolio:
    """Positions from ``config/portfolio.yml`` valued at the latest prices."""

    positions: tuple[Position, ...] = ()

    @classmethod
    def load(cls, path: Path) -> Portfolio:
        """Read the file; a missing file is an empty portfolio, a bad one a ConfigError."""
        if not path.exists():
            return cls()
        try:
            data = yaml.safe_load(path.read_text()) or {}
            return cls(tuple(_PortfolioFile.model_validate(data).positions))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: {where}: {first['msg']}") from None

    def valuation(self, prices: dict[str, float]) -> dict[str, Any]:
        """Per position and in total: market value and unrealized P&L at ``prices``."""
        rows: list[dict[str, Any]] = []
        total_cost = total_value = total_pnl = 0.0
        for pos in self.positions:
            price = prices.get(pos.symbol)
            cost = pos.quantity * pos.average_price
            row: dict[str, Any] = {
                "symbol": pos.symbol,
                "quantity": pos.quantity,
                "average_price": pos.average_price,
                "price": price,
                "cost": cost,
                "market_value": None,
                "unrealized_pnl": None,
                "unrealized_pnl_pct": None,
            }
            if price is not None:
                pnl = (price - pos.average_price) * pos.quantity
                row.update(
                    market_value=pos.quantity * price,
                    unrealized_pnl=pnl,
                    unrealized_pnl_pct=pnl / abs(cost) * 100.0,
                )
                total_value += pos.quantity * price
                total_pnl += pnl
            total_cost += cost
            rows.append(row)
        return {
            "positions": rows,
            "total_cost": total_cost,
            "total_market_value": total_value,
            "total_unrealized_pnl": total_pnl,
        }
