"""Strategies: typed parameters in, a vectorised target position per bar out.

A strategy is a frozen dataclass whose fields are its parameters::

    @dataclass(frozen=True)
    class Momentum(Strategy):
        name: ClassVar[str] = "momentum"
        lookback: int = param(20, "bars to look back")

        def signals(self, bars: Bars) -> FloatArray:
            change = np.full(len(bars), np.nan)
            change[self.lookback:] = bars.close[self.lookback:] / bars.close[:-self.lookback] - 1
            return np.sign(change)

``signals`` returns, for every bar, the position wanted after that bar's
close: 1 fully long, -1 fully short, 0 flat, anything between for a part of
the sized position, and NaN for "keep the previous target". The engine
forward-fills the NaNs (starting flat) and trades every change.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from marketlake.backtest import indicators as ind
from marketlake.backtest.data import Bars
from marketlake.backtest.indicators import FloatArray
from marketlake.errors import InputError

Scalar = int | float | bool


def param(default: Scalar, help: str) -> Any:
    """A strategy parameter with its default and a one-line description."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Parameter:
    """What a strategy parameter is: name, type, default and description."""

    name: str
    type: type
    default: Scalar
    help: str

    def describe(self) -> str:
        return f"{self.name} ({self.type.__name__}, default {self.default})"


@dataclass(frozen=True)
class Strategy(ABC):
    """Base of every strategy; subclasses are frozen dataclasses of their parameters."""

    name: ClassVar[str]

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:  # noqa: B027 - optional hook, most strategies need no check
        """Raise :class:`InputError` when the parameters do not fit together."""

    def min_bars(self) -> int:
        """How many bars a symbol needs for the strategy to give one usable signal."""
        return 2

    @abstractmethod
    def signals(self, bars: Bars) -> FloatArray:
        """The target position after each bar's close (NaN: keep the previous one)."""

    @classmethod
    def parameters(cls) -> list[Parameter]:
        """The typed parameters of this strategy, in declaration order."""
        hints = typing.get_type_hints(cls)
        return [
            Parameter(
                f.name, hints[f.name], typing.cast(Scalar, f.default), f.metadata.get("help", "")
            )
            for f in dataclasses.fields(cls)
        ]

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> Strategy:
        """Build the strategy from ``params`` (strings are converted to each parameter's type).

        Unknown names are rejected with the list of valid ones.
        """
        known = {p.name: p for p in cls.parameters()}
        unknown = [name for name in params if name not in known]
        if unknown:
            valid = ", ".join(p.describe() for p in known.values()) or "none"
            raise InputError(
                f"unknown parameter {unknown[0]!r} for strategy {cls.name}; "
                f"valid parameters: {valid}",
                param=unknown[0],
            )
        values = {name: coerce(known[name], value) for name, value in params.items()}
        return cls(**values)

    def params(self) -> dict[str, Scalar]:
        """The parameter values of this instance."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def label(self) -> str:
        """``name(k=v, ...)`` for titles and messages."""
        inner = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({inner})"


def coerce(spec: Parameter, value: object) -> Scalar:
    """Convert ``value`` (a string from the command line, or a JSON scalar) to ``spec.type``."""
    problem = f"parameter {spec.name} must be {_article(spec.type)}, got {value!r}"
    if spec.type is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise InputError(problem, param=spec.name)
    if isinstance(value, bool):
        raise InputError(problem, param=spec.name)
    try:
        number = float(value) if isinstance(value, int | float) else float(str(value).strip())
    except ValueError:
        raise InputError(problem, param=spec.name) from None
    if spec.type is int:
        if not number.is_integer():
            raise InputError(problem, param=spec.name)
        return int(number)
    if not np.isfinite(number):
        raise InputError(problem, param=spec.name)
    return number


def _article(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false"}.get(kind, kind.__name__)


def _positive(strategy: Strategy, *names: str, minimum: float = 1) -> None:
    for name in names:
        value = getattr(strategy, name)
        if value < minimum:
            raise InputError(
                f"{strategy.name}: {name} must be at least {minimum}, got {value}", param=name
            )


def _events(up: np.ndarray[Any, Any], down: np.ndarray[Any, Any]) -> FloatArray:
    out = np.full(len(up), np.nan)
    out[up] = 1.0
    out[down] = -1.0
    return out


@dataclass(frozen=True)
class SmaCross(Strategy):
    """Long when the fast SMA crosses above the slow one, short (or flat) when it crosses below.

    Positions start at the first crossing, not in the middle of a trend, as in
    backtesting.py's ``SmaCross`` example.
    """

    name: ClassVar[str] = "sma_cross"
    fast: int = param(10, "bars in the fast moving average")
    slow: int = param(30, "bars in the slow moving average")

    def check(self) -> None:
        _positive(self, "fast", "slow")
        if self.fast >= self.slow:
            raise InputError(
                f"sma_cross: fast ({self.fast}) must be smaller than slow ({self.slow})",
                param="fast",
            )

    def min_bars(self) -> int:
        return self.slow + 1

    def signals(self, bars: Bars) -> FloatArray:
        prefix = bars.memo(("prefix", "close"), lambda: ind.prefix_sums(bars.close))
        fast = bars.memo(("sma", self.fast), lambda: ind.sma(bars.close, self.fast, prefix))
        slow = bars.memo(("sma", self.slow), lambda: ind.sma(bars.close, self.slow, prefix))
        return _events(*ind.crossings(fast, slow))


@dataclass(frozen=True)
class RsiReversion(Strategy):
    """Mean reversion on Wilder's RSI: long below ``lower``, short (or flat) above ``upper``."""

    name: ClassVar[str] = "rsi_reversion"
    period: int = param(14, "RSI period in bars")
    lower: float = param(30.0, "buy when the RSI is below this (oversold)")
    upper: float = param(70.0, "sell when the RSI is above this (overbought)")

    def check(self) -> None:
        _positive(self, "period", minimum=2)
        if not 0 < self.lower < self.upper < 100:
            raise InputError(
                f"rsi_reversion: need 0 < lower < upper < 100, got lower="
                f"{self.lower} and upper={self.upper}",
                param="lower",
            )

    def min_bars(self) -> int:
        return self.period + 2

    def signals(self, bars: Bars) -> FloatArray:
        rsi = bars.memo(("rsi", self.period), lambda: ind.rsi(bars.close, self.period))
        with np.errstate(invalid="ignore"):
            return _events(rsi < self.lower, rsi > self.upper)


@dataclass(frozen=True)
class BollingerBreakout(Strategy):
    """Long when the close breaks above the upper band until it falls below the middle;
    short when it breaks below the lower band until it rises above the middle."""

    name: ClassVar[str] = "bollinger_breakout"
    period: int = param(20, "bars in the moving average and deviation")
    k: float = param(2.0, "band width in standard deviations")

    def check(self) -> None:
        _positive(self, "period", minimum=2)
        if self.k <= 0:
            raise InputError(f"bollinger_breakout: k must be positive, got {self.k}", param="k")

    def min_bars(self) -> int:
        return self.period + 1

    def signals(self, bars: Bars) -> FloatArray:
        lower, middle, upper = bars.memo(
            ("bbands", self.period, self.k), lambda: ind.bollinger(bars.close, self.period, self.k)
        )
        close = bars.close
        with np.errstate(invalid="ignore"):
            long_leg = _hold(close > upper, close < middle)
            short_leg = _hold(close < lower, close > middle)
        return long_leg - short_leg


def _hold(enter: np.ndarray[Any, Any], leave: np.ndarray[Any, Any]) -> FloatArray:
    """1 from each ``enter`` until the next ``leave`` (exclusive), else 0."""
    state = np.where(enter, 1.0, np.where(leave, 0.0, np.nan))
    return np.nan_to_num(forward_fill(state), nan=0.0)


def forward_fill(values: FloatArray) -> FloatArray:
    """Replace each NaN by the last value before it (leading NaNs stay)."""
    index = np.where(np.isnan(values), -1, np.arange(len(values)))
    np.maximum.accumulate(index, out=index)
    out: FloatArray = values[np.maximum(index, 0)]
    out[index < 0] = np.nan
    return out


@dataclass(frozen=True)
class BuyAndHold(Strategy):
    """Buy at the first opportunity and hold to the end."""

    name: ClassVar[str] = "buy_and_hold"

    def signals(self, bars: Bars) -> FloatArray:
        out = np.full(len(bars), np.nan)
        out[0] = 1.0
        return out


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (SmaCross, RsiReversion, BollingerBreakout, BuyAndHold)
}


def get_strategy(name: str, params: Mapping[str, object] | None = None) -> Strategy:
    """The built-in strategy ``name`` with ``params``; unknown names list the valid ones."""
    cls = STRATEGIES.get(name.strip().lower().replace("-", "_"))
    if cls is None:
        raise InputError(
            f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}",
            param="strategy",
        )
    return cls.from_params(params or {})


__all__ = ["STRATEGIES", "Parameter", "Strategy", "get_strategy", "param"]
