"""Gap repair: re-fetch only the missing ranges of a stored series from a provider.

:func:`repair_gaps` finds the gaps of a series (the ``gap`` rule over the stored
bars), asks the provider for exactly those ranges, passes what comes back through
the quality policy, writes it, rolls the filled buckets up, and records a
``repair`` job whose summary lists every range with what was filled.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from marketlake.errors import InputError, MarketLakeError, NotFoundError
from marketlake.ingest.horizon import clamp_to_now
from marketlake.ingest.rollups import rollup_spans
from marketlake.providers import PROVIDERS
from marketlake.providers.base import Provider
from marketlake.quality.checks import IngestQuality, instrument_of, stored_gaps
from marketlake.quality.gaps import Gap
from marketlake.quality.policy import QualityPolicy
from marketlake.schema import Timeframe, from_epoch_us, normalize_symbol
from marketlake.store.base import Store

MAX_REQUESTS = 200  # more gaps than this are merged, nearest first, into fewer requests


@dataclass(slots=True)
class RepairedRange:
    """One requested range: bars missing before, fetched, and newly stored."""

    start: datetime
    end: datetime
    missing: int
    fetched: int = 0
    inserted: int = 0
    rejected: int = 0
    error: str | None = None


@dataclass(slots=True)
class RepairResult:
    """The outcome of a repair job."""

    job_id: str
    symbol: str
    timeframe: str
    provider: str
    missing_before: int = 0
    missing_after: int = 0
    ranges: list[RepairedRange] = field(default_factory=list)
    quality_report: str | None = None
    seconds: float = 0.0

    @property
    def filled(self) -> int:
        return self.missing_before - self.missing_after

    def summary(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "provider": self.provider,
            "missing_before": self.missing_before,
            "missing_after": self.missing_after,
            "filled": self.filled,
            "ranges": [asdict(r) for r in self.ranges],
            "quality_report": self.quality_report,
            "seconds": round(self.seconds, 3),
        }


def source_provider(store: Store, symbol: str, timeframe: str) -> str:
    """The provider most bars of a series came from (their ``source``)."""
    source = store.main_source(symbol, timeframe)
    if source is None:
        raise NotFoundError(f"no {timeframe} bars of {symbol} are stored; ingest some first")
    if source not in PROVIDERS:
        raise InputError(
            f"the {timeframe} bars of {symbol} came from {source!r}, which is no "
            f"provider to fetch from; pass --provider (one of "
            f"{', '.join(sorted(PROVIDERS))})",
            param="provider",
        )
    return source


def merge_gaps(gaps: list[Gap], limit: int = MAX_REQUESTS) -> list[Gap]:
    """At most ``limit`` ranges: the gaps closest to each other are merged first."""
    if len(gaps) <= limit:
        return gaps
    starts = np.array([g.start for g in gaps])
    ends = np.array([g.end for g in gaps])
    distance = starts[1:] - ends[:-1]
    cut = np.sort(distance)[len(gaps) - limit - 1]  # merge every distance up to this one
    joins = np.append(distance <= cut, False)
    merged: list[Gap] = []
    first, missing = 0, 0
    for i, gap in enumerate(gaps):
        missing += gap.missing
        if not joins[i]:
            merged.append(Gap(gaps[first].start, gap.end, missing))
            first, missing = i + 1, 0
    return merged


async def repair_gaps(
    store: Store,
    provider: Provider,
    symbol: str,
    timeframe: str | Timeframe,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    policy: QualityPolicy | None = None,
    rollup: bool | None = None,
) -> RepairResult:
    """Fill the gaps of a stored series in ``[start, end)`` (default: its stored span)."""
    began = time.perf_counter()
    symbol = normalize_symbol(symbol)
    tf = provider.check_timeframe(timeframe)
    store.instrument(symbol)
    coverage = store.coverage(symbol, tf)
    if coverage.first is None or coverage.last is None:
        raise NotFoundError(
            f"no {tf} bars of {symbol} are stored; ingest some first "
            f"(`marketlake ingest PROVIDER {symbol} -t {tf}`)"
        )
    lo = start or coverage.first
    hi = clamp_to_now(lo, end or tf.next_start(coverage.last), tf)  # no gap past now
    instrument = instrument_of(store, symbol)
    gaps = stored_gaps(store, instrument, tf, lo, hi).gaps
    job = store.create_job(
        "repair",
        {
            "provider": provider.name,
            "symbol": symbol,
            "timeframe": str(tf),
            "start": lo.isoformat(),
            "end": hi.isoformat(),
        },
    )
    store.update_job(job.id, status="running")
    result = RepairResult(
        job.id, symbol, str(tf), provider.name, missing_before=sum(g.missing for g in gaps)
    )
    settings = provider.settings
    quality = IngestQuality(store, policy or QualityPolicy.from_settings(settings), tf, lo, hi)
    for gap in merge_gaps(gaps):
        result.ranges.append(await _fill(store, provider, quality, symbol, tf, gap))
    quality.finish(symbol)
    result.missing_after = sum(g.missing for g in stored_gaps(store, instrument, tf, lo, hi).gaps)
    filled = [r for r in result.ranges if r.inserted]
    if filled and (settings.rollup_after_ingest if rollup is None else rollup):
        rollup_spans(
            store,
            {symbol: (filled[0].start, filled[-1].end)},
            tf,
            settings.rollup_timeframes,
            replace_sources=settings.rollup_replace_sources,
        )
    result.quality_report = quality.save(job.id, [symbol], provider=provider.name)
    result.seconds = time.perf_counter() - began
    errors = "; ".join(f"{r.start.isoformat()}: {r.error}" for r in result.ranges if r.error)
    status = "failed" if errors and not filled else "partial" if errors else "succeeded"
    store.update_job(job.id, status=status, summary=result.summary(), error=errors or None)
    return result


async def _fill(
    store: Store, provider: Provider, quality: IngestQuality, symbol: str, tf: Timeframe, gap: Gap
) -> RepairedRange:
    """Fetch and store one range."""
    done = RepairedRange(from_epoch_us(gap.start), from_epoch_us(gap.end), gap.missing)
    try:
        async for batch in provider.fetch_bars(symbol, tf, done.start, done.end):
            kept, found = quality.check(batch)
            done.fetched += batch.num_rows
            done.rejected += found.rejected
            done.inserted += store.write_bars(kept).inserted
    except MarketLakeError as exc:
        done.error = exc.message
    return done
