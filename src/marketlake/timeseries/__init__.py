"""Time-series kernels on Arrow columns: sessions, roll-ups, corporate-action adjustment,
time helpers.

Nothing here touches the store, the network or the bus; everything above builds on it.
"""
