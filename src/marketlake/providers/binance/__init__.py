"""Binance: the REST klines provider (:mod:`.rest`)."""
