"""MarketLake: a market-data platform.

Ingest bars and trades from providers, validate them, store them as time
series, roll them up, serve them over a REST/SSE API and a CLI, run streaming
analytics and alerts, and backtest strategies on stored data.
"""

__version__ = "0.1.0"
