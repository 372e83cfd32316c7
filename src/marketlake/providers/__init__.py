"""Providers of market data, one module each, registered in :data:`PROVIDERS`."""

from __future__ import annotations

import httpx

from marketlake.config import Settings
from marketlake.errors import InputError
from marketlake.providers.alpaca import AlpacaProvider
from marketlake.providers.base import Provider
from marketlake.providers.binance.rest import BinanceProvider
from marketlake.providers.csv.reader import CsvProvider
from marketlake.providers.synthetic import SyntheticProvider
from marketlake.providers.yahoo import YahooProvider

PROVIDERS: dict[str, type[Provider]] = {
    provider.name: provider
    for provider in (SyntheticProvider, CsvProvider, YahooProvider, AlpacaProvider, BinanceProvider)
}


def get_provider(
    name: str, settings: Settings, client: httpx.AsyncClient | None = None
) -> Provider:
    """Instantiate the provider registered as ``name``."""
    try:
        cls = PROVIDERS[name.lower()]
    except KeyError:
        raise InputError(
            f"unknown provider {name!r}; choose one of {', '.join(sorted(PROVIDERS))}",
            param="provider",
        ) from None
    return cls(settings, client)


__all__ = ["PROVIDERS", "Provider", "get_provider"]
