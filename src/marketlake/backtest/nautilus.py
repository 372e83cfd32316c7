"""NautilusTrader interop: stored bars as a Nautilus data catalog, and SMA-cross run in Nautilus.

An optional extra: ``pip install 'marketlake[nautilus]'`` (``nautilus-trader``). Nothing
else in MarketLake imports this module, so the core install stays free of it.

* :func:`write_catalog` writes instruments and bars into a Nautilus
  ``ParquetDataCatalog`` (``marketlake export --format nautilus --to DIR``). Stocks become
  ``Equity`` instruments on their exchange's venue, ``…USDT``/``…USD`` crypto pairs
  ``CurrencyPair`` ones; a bar's ``ts_event`` is its *close* time (Nautilus' convention),
  MarketLake's ``ts`` its open time.
* :func:`run_sma_cross` runs MarketLake's SMA-cross strategy in Nautilus' backtest
  engine (``marketlake backtest run --engine nautilus``) under the fill rules both
  engines share: a cash account, long only, all-in whole units, market orders filled at
  the close of the bar that crossed (MarketLake's ``fill="close"``), no fees. Its trades
  equal MarketLake's engine under those rules (``tests/backtest/test_nautilus.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from marketlake.backtest.data import Bars
from marketlake.errors import InputError
from marketlake.schema import Instrument, Timeframe

HINT = "install the extra: pip install 'marketlake[nautilus]' (nautilus-trader)"
_QUOTES = ("USDT", "USDC", "BUSD", "USD", "EUR", "BTC")
_UNITS = {"m": "MINUTE", "h": "HOUR", "d": "DAY", "w": "WEEK", "mo": "MONTH"}


def _require() -> None:
    try:
        import nautilus_trader  # noqa: F401
    except ImportError:
        raise InputError(f"NautilusTrader is not installed; {HINT}") from None


def precision_of(values: np.ndarray[Any, Any], most: int = 8) -> int:
    """The fewest decimals (up to ``most``) that keep every value as it is."""
    for digits in range(most + 1):
        if np.allclose(np.round(values, digits), values, rtol=0, atol=10.0 ** -(most + 1)):
            return digits
    return most


def bar_spec(timeframe: str) -> str:
    """``1h`` → ``1-HOUR``: Nautilus' bar specification step and aggregation."""
    tf = Timeframe.parse(timeframe)
    text = str(tf)
    unit = "mo" if text.endswith("mo") else text[-1]
    return f"{text[: -len(unit)]}-{_UNITS[unit]}"


def nautilus_instrument(instrument: Instrument, bars: Bars) -> Any:
    """The Nautilus instrument of a MarketLake one (price precision read off the bars)."""
    _require()
    from nautilus_trader.model.currencies import USD
    from nautilus_trader.model.identifiers import InstrumentId, Symbol, Venue
    from nautilus_trader.model.instruments import CurrencyPair, Equity
    from nautilus_trader.model.objects import Currency, Price, Quantity

    prices = np.concatenate([bars.open, bars.high, bars.low, bars.close])
    digits = precision_of(prices)
    increment = Price(10.0**-digits, digits)
    symbol = instrument.symbol.replace("/", "").replace("-", "")
    venue = Venue((instrument.exchange or "XNAS").upper().replace(" ", ""))
    instrument_id = InstrumentId(Symbol(symbol), venue)
    if instrument.asset_class == "crypto":
        quote = next((q for q in _QUOTES if symbol.endswith(q) and len(symbol) > len(q)), None)
        if quote is not None:
            size_digits = 8
            return CurrencyPair(
                instrument_id,
                Symbol(symbol),
                Currency.from_str(symbol[: -len(quote)]),
                Currency.from_str(quote),
                digits,
                size_digits,
                increment,
                Quantity(10.0**-size_digits, size_digits),
                ts_event=0,
                ts_init=0,
            )
    return Equity(
        instrument_id,
        Symbol(symbol),
        currency=USD,
        price_precision=digits,
        price_increment=increment,
        lot_size=Quantity.from_int(1),
        ts_event=0,
        ts_init=0,
    )


def nautilus_bars(nautilus_instrument: Any, bars: Bars, timeframe: str) -> list[Any]:
    """MarketLake bars as Nautilus ``Bar`` objects, stamped at their close."""
    _require()
    from nautilus_trader.model.data import BarType
    from nautilus_trader.persistence.wranglers import BarDataWrangler

    tf = Timeframe.parse(timeframe)
    bar_type = BarType.from_str(f"{nautilus_instrument.id}-{bar_spec(timeframe)}-LAST-EXTERNAL")
    closes = [tf.next_start(t) for t in pd.to_datetime(bars.ts, unit="us", utc=True)]
    frame = pd.DataFrame(
        {
            "open": bars.open,
            "high": bars.high,
            "low": bars.low,
            "close": bars.close,
            "volume": np.nan_to_num(bars.volume),
        },
        index=pd.DatetimeIndex(closes, name="timestamp"),
    )
    return list(BarDataWrangler(bar_type, nautilus_instrument).process(frame))


@dataclass
class CatalogSummary:
    path: Path
    instruments: int
    bars: int


def write_catalog(path: Path, items: Sequence[tuple[Instrument, Bars, str]]) -> CatalogSummary:
    """Write instruments and their bars into a Nautilus ``ParquetDataCatalog`` at ``path``."""
    _require()
    from nautilus_trader.persistence.catalog import ParquetDataCatalog

    path.mkdir(parents=True, exist_ok=True)
    catalog = ParquetDataCatalog(str(path))
    count = 0
    for instrument, bars, timeframe in items:
        if not len(bars):
            continue
        ours = nautilus_instrument(instrument, bars)
        catalog.write_data([ours])
        data = nautilus_bars(ours, bars, timeframe)
        catalog.write_data(data)
        count += len(data)
    return CatalogSummary(path, len(items), count)


@dataclass
class NautilusRun:
    """What Nautilus did: its fills, the round trips, and the final equity."""

    fills: pa.Table
    trades: pa.Table
    final_equity: float
    cash: float


def run_sma_cross(
    instrument: Instrument,
    bars: Bars,
    timeframe: str,
    *,
    fast: int,
    slow: int,
    cash: float = 10_000.0,
) -> NautilusRun:
    """Run the SMA cross (long only, all-in whole units, fills at the crossing bar's close)
    in NautilusTrader's backtest engine."""
    _require()
    from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
    from nautilus_trader.config import LoggingConfig
    from nautilus_trader.model.enums import AccountType, OmsType
    from nautilus_trader.model.objects import Money

    if fast >= slow:
        raise InputError(f"sma_cross: fast ({fast}) must be smaller than slow ({slow})")
    ours = nautilus_instrument(instrument, bars)
    data = nautilus_bars(ours, bars, timeframe)
    currency = ours.quote_currency
    engine = BacktestEngine(BacktestEngineConfig(logging=LoggingConfig(bypass_logging=True)))
    try:
        engine.add_venue(
            venue=ours.id.venue,
            oms_type=OmsType.NETTING,
            account_type=AccountType.CASH,
            base_currency=currency,
            starting_balances=[Money(cash, currency)],
        )
        engine.add_instrument(ours)
        engine.add_data(data)
        engine.add_strategy(_strategy(ours, data[0].bar_type, fast, slow, currency))
        engine.run()
        report = engine.trader.generate_order_fills_report()
        account = engine.portfolio.account(ours.id.venue)
        balance = float(account.balance_total(currency).as_double())
        position = float(engine.portfolio.net_position(ours.id))
    finally:
        engine.dispose()
    fills = _fills(report, timeframe)
    final = balance + position * float(bars.close[-1])
    return NautilusRun(fills, _round_trips(fills, bars), final, cash)


def _strategy(instrument: Any, bar_type: Any, fast: int, slow: int, currency: Any) -> Any:
    from nautilus_trader.config import StrategyConfig
    from nautilus_trader.indicators import SimpleMovingAverage
    from nautilus_trader.model.enums import OrderSide
    from nautilus_trader.trading.strategy import Strategy

    class SmaCrossConfig(StrategyConfig, frozen=True):
        fast: int = 10
        slow: int = 30

    class SmaCross(Strategy):  # type: ignore[misc]
        """MarketLake's sma_cross: enter when the fast average crosses above the slow one,
        leave when it crosses below (a cross is a change of sign of fast - slow)."""

        def __init__(self, config: SmaCrossConfig) -> None:
            super().__init__(config)
            self.fast = SimpleMovingAverage(config.fast)
            self.slow = SimpleMovingAverage(config.slow)
            self.previous: float | None = None

        def on_start(self) -> None:
            self.register_indicator_for_bars(bar_type, self.fast)
            self.register_indicator_for_bars(bar_type, self.slow)
            self.subscribe_bars(bar_type)

        def on_bar(self, bar: Any) -> None:
            if not self.slow.initialized:
                return
            diff = self.fast.value - self.slow.value
            previous, self.previous = self.previous, diff
            if previous is None:
                return
            flat = self.portfolio.is_flat(instrument.id)
            if previous <= 0 < diff and flat:
                free = self.portfolio.account(instrument.id.venue).balance_free(currency)
                units = math.floor(free.as_double() / bar.close.as_double())
                if units > 0:
                    order = self.order_factory.market(
                        instrument.id, OrderSide.BUY, instrument.make_qty(Decimal(units))
                    )
                    self.submit_order(order)
            elif previous >= 0 > diff and not flat:
                self.close_all_positions(instrument.id)

    return SmaCross(SmaCrossConfig(fast=fast, slow=slow))


def _fills(report: pd.DataFrame, timeframe: str) -> pa.Table:
    tf = Timeframe.parse(timeframe)
    if report.empty:
        return pa.table({"ts": pa.array([], pa.timestamp("us", tz="UTC"))})
    closes = pd.to_datetime(report["ts_last"], utc=True)
    # back from Nautilus' close stamps to the open time of the bar that filled
    opens = [tf.floor(t - pd.Timedelta(microseconds=1)) for t in closes]
    return pa.table(
        {
            "ts": pa.array(opens, pa.timestamp("us", tz="UTC")),
            "side": report["side"].astype(str).str.lower().to_list(),
            "units": report["filled_qty"].astype(float).to_numpy(),
            "price": report["avg_px"].astype(float).to_numpy(),
        }
    )


def _round_trips(fills: pa.Table, bars: Bars) -> pa.Table:
    """Buys paired with the sells that closed them (the last one left open if unsold)."""
    rows = fills.to_pylist()
    trades = []
    for i in range(0, len(rows), 2):
        entry = rows[i]
        exit_ = rows[i + 1] if i + 1 < len(rows) else None
        trades.append(
            {
                "size": entry["units"],
                "entry_time": entry["ts"],
                "entry_price": entry["price"],
                "exit_time": exit_["ts"] if exit_ else None,
                "exit_price": exit_["price"] if exit_ else float(bars.close[-1]),
                "exit_reason": "signal" if exit_ else "open",
            }
        )
    return (
        pa.Table.from_pylist(trades) if trades else pa.table({"size": pa.array([], pa.float64())})
    )
