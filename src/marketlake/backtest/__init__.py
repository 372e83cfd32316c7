"""Backtesting: vectorised strategies on stored or synthetic bars, statistics and reports.

The public names::

    from marketlake.backtest import BacktestConfig, run_backtest, get_backtest

    result = run_backtest(store, "sma_cross", {"fast": 10, "slow": 30},
                          symbols=["AAPL"], timeframe="1d", start=..., end=...)
    result.stats["sharpe"], result.trades, result.equity_table()

Modules: ``engine`` (fills, sizing, stops, equity), ``strategies`` (the
``Strategy`` base and the built-ins), ``indicators``, ``stats``, ``report``
(self-contained HTML), ``sweep`` (parameter grids on all cores), ``runs``
(load, run, store), ``data`` (bars from the store or synthetic).
"""

from marketlake.backtest.engine import BacktestConfig, BacktestResult, run
from marketlake.backtest.runs import get_backtest, list_backtests, run_backtest
from marketlake.backtest.strategies import STRATEGIES, Strategy, get_strategy

__all__ = [
    "STRATEGIES",
    "BacktestConfig",
    "BacktestResult",
    "Strategy",
    "get_backtest",
    "get_strategy",
    "list_backtests",
    "run",
    "run_backtest",
]
