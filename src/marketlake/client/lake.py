"""``Lake``: what a notebook or script calls; frames out, the project's errors raised."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pyarrow as pa

from marketlake.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

As = Literal["pandas", "polars", "arrow"]
TimeLike = str | date | datetime | None


class Transport(Protocol):
    """What the local and the remote transport both do (one contract, two ways)."""

    name: str

    def instruments(self) -> list[dict[str, Any]]: ...
    def instrument(self, symbol: str) -> dict[str, Any]: ...
    def add_instrument(self, fields: dict[str, Any]) -> dict[str, Any]: ...
    def remove_instrument(self, symbol: str) -> None: ...
    def bars(
        self,
        symbols: list[str],
        timeframe: str,
        start: str | None,
        end: str | None,
        adjusted: bool,
    ) -> pa.Table: ...
    def trades(self, symbol: str, start: str | None, end: str | None) -> pa.Table: ...
    def coverage(self, symbols: list[str] | None, timeframe: str | None) -> pa.Table: ...
    def actions(self, symbol: str, start: str | None, end: str | None) -> pa.Table: ...
    def task(self, kind: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def import_csv(self, path: str, options: dict[str, Any]) -> dict[str, Any]: ...
    def latest(self, symbol: str) -> dict[str, Any]: ...
    def jobs(self, limit: int) -> list[dict[str, Any]]: ...
    def ingest(
        self,
        provider: str,
        symbols: list[str],
        timeframe: str,
        start: str | None,
        end: str | None,
        period: str | None,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]: ...
    def backtest(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def alerts(self, limit: int) -> list[dict[str, Any]]: ...
    def metrics(self) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


def connect(uri: str | None = None, *, api_key: str | None = None, timeout: float = 60.0) -> Lake:
    """Open MarketLake: the configured store, a store URI, or a server's URL.

    >>> lake = connect()                                   # MARKETLAKE_STORE
    >>> lake = connect("duckdb:///./data/marketlake.duckdb")  # a store, in this process
    >>> lake = connect("http://127.0.0.1:8000", api_key="mlk_…")  # a server
    """
    if uri is not None and uri.startswith(("http://", "https://")):
        from marketlake.client.remote import RemoteTransport

        return Lake(RemoteTransport(uri, api_key=api_key, timeout=timeout))
    from marketlake.client.local import LocalTransport
    from marketlake.store.holder import find_server

    local = LocalTransport(uri)
    server = find_server(local.settings.store)
    if server is not None:
        # `marketlake serve` (or `demo`) holds this DuckDB file: go through it, with the
        # token it left for processes of this machine beside the database
        from marketlake.client.remote import RemoteTransport

        return Lake(RemoteTransport(server.url, api_key=server.token, timeout=timeout))
    return Lake(local)


def _time_param(value: TimeLike) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _symbols(symbols: str | Sequence[str]) -> list[str]:
    names = [symbols] if isinstance(symbols, str) else list(symbols)
    out = [s.strip().upper() for item in names for s in item.split(",") if s.strip()]
    if not out:
        raise InputError("give at least one symbol", param="symbols")
    return list(dict.fromkeys(out))


def frame(
    table: pa.Table, as_: As, *, index: str | None = "ts", categorical: tuple[str, ...] = ()
) -> Any:
    """An Arrow table as pandas (with a tz-aware UTC ``index``), Polars or Arrow."""
    if as_ == "arrow":
        return table
    if as_ == "polars":
        import polars as pl

        return pl.from_arrow(table)
    if as_ != "pandas":
        raise InputError(f"as_={as_!r}: use 'pandas', 'polars' or 'arrow'", param="as_")
    # repeated strings (source, symbol) become categoricals: a Python string per row is
    # most of the cost of a large conversion
    for i, field_ in enumerate(table.schema):
        if pa.types.is_string(field_.type) and field_.name in categorical:
            table = table.set_column(i, field_.name, _dictionary(table.column(i)))
    # Arrow converts the columns straight into pandas' consolidated blocks: one copy, into
    # memory the frame owns (users write into their frame; Arrow's zero-copy arrays would
    # be read-only). The index is built on its own: set_index would copy the frame again
    if not index or index not in table.column_names:
        return table.to_pandas()
    labels = _labels(table.column(index), index)
    df = table.drop_columns([index]).to_pandas()
    df.index = labels
    return df


def _labels(column: pa.ChunkedArray, name: str) -> pd.Index:
    """The frame's index. UTC times become a DatetimeIndex from their int64 values
    directly, without the copies of Arrow's tz-aware pandas conversion."""
    import pandas as pd

    kind = column.type
    if pa.types.is_timestamp(kind) and kind.tz == "UTC" and not column.null_count:
        values = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        return pd.DatetimeIndex(values.to_numpy(), name=name).tz_localize("UTC")
    labels: pd.Index = pd.Index(column.to_pandas(), name=name)
    return labels


def _dictionary(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A string column dictionary-encoded. A column of one value (a series' source, as a
    store gives it) is checked with one comparison instead of hashing every row."""
    import numpy as np
    import pyarrow.compute as pc

    if len(column) and not column.null_count:
        first = column[0]
        if pc.all(pc.equal(column, first)).as_py():
            codes = pa.array(np.zeros(len(column), np.int32))
            values = pa.array([first.as_py()], column.type)
            return pa.chunked_array([pa.DictionaryArray.from_arrays(codes, values)])
    return column.dictionary_encode()


@dataclass
class BacktestRun:
    """A stored backtest: ``.stats`` (a dict), ``.trades`` and ``.equity`` (DataFrames),
    ``.plot()`` (a matplotlib figure) and a readable table in Jupyter."""

    id: str
    request: dict[str, Any]
    stats: dict[str, Any]
    trades: pd.DataFrame
    equity: pd.DataFrame
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def of(cls, record: dict[str, Any]) -> BacktestRun:
        import pandas as pd

        trades = pd.DataFrame(record.get("trades") or [])
        for column in ("entry_time", "exit_time", "ts"):
            if column in trades.columns:
                trades[column] = pd.to_datetime(trades[column], utc=True)
        points = record.get("equity") or []
        equity = pd.DataFrame(points, columns=["ts", "equity"])
        equity["ts"] = pd.to_datetime(equity["ts"], utc=True)
        equity = equity.set_index("ts")
        return cls(
            str(record["id"]), record.get("request") or {}, record.get("stats") or {}, trades,
            equity, record,
        )  # fmt: skip

    def plot(self) -> Any:
        """The equity curve and its drawdown as a matplotlib figure (``pip install matplotlib``)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise InputError("plot() needs matplotlib: pip install matplotlib") from None
        figure, (top, bottom) = plt.subplots(
            2, 1, sharex=True, figsize=(9, 5), gridspec_kw={"height_ratios": [3, 1]}
        )
        curve = self.equity["equity"]
        top.plot(curve.index, curve.to_numpy(), color="#2563eb")
        top.set_ylabel("equity")
        top.set_title(self.title())
        drawdown = (curve / curve.cummax() - 1) * 100
        bottom.fill_between(drawdown.index, drawdown.to_numpy(), 0, color="#dc2626", alpha=0.4)
        bottom.set_ylabel("drawdown %")
        figure.tight_layout()
        return figure

    def title(self) -> str:
        request = self.request
        symbols = ", ".join(request.get("symbols") or [])
        return f"{request.get('strategy', 'backtest')} on {symbols} {request.get('timeframe', '')}"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_cell(v))}</td></tr>"
            for k, v in self.stats.items()
            if not isinstance(v, dict | list)
        )
        return (
            f"<div><b>{html.escape(self.title())}</b> <small>(backtest {html.escape(self.id)}, "
            f"{len(self.trades)} trades)</small><table>{rows}</table></div>"
        )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1 else f"{value:,.2f}"
    return "" if value is None else str(value)


class Lake:
    """One MarketLake, over a local store or a server; see :func:`connect`."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def __repr__(self) -> str:
        return f"<Lake {self._t.name}>"

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._t.close()

    # -- instruments ------------------------------------------------------------------------

    def instruments(self, *, as_: As = "pandas") -> Any:
        """Every registered instrument, one row each."""
        rows = self._t.instruments()
        table = (
            pa.Table.from_pylist(rows) if rows else pa.table({"symbol": pa.array([], pa.string())})
        )
        return frame(table, as_, index="symbol")

    def instrument(self, symbol: str) -> dict[str, Any]:
        """One instrument as a dict; an unknown symbol raises ``NotFoundError``."""
        return self._t.instrument(_symbols(symbol)[0])

    def add_instrument(self, symbol: str, **fields: Any) -> dict[str, Any]:
        """Register (or replace) an instrument: ``name``, ``asset_class``, ``exchange``,
        ``currency``, ``timezone``."""
        return self._t.add_instrument({"symbol": _symbols(symbol)[0], **fields})

    def remove_instrument(self, symbol: str) -> None:
        """Unregister an instrument (its stored data stays)."""
        self._t.remove_instrument(_symbols(symbol)[0])

    # -- data -------------------------------------------------------------------------------

    def bars(
        self,
        symbols: str | Sequence[str],
        timeframe: str = "1d",
        start: TimeLike = None,
        end: TimeLike = None,
        *,
        adjusted: bool = False,
        as_: As = "pandas",
    ) -> Any:
        """Stored bars in ``[start, end)``.

        One symbol: a frame indexed by ``ts`` (the bar's open time, tz-aware UTC) with
        open, high, low, close, volume, trades, vwap, source (categorical). Several
        symbols: the same columns plus ``symbol`` (categorical), in long format, ordered
        by symbol then time (pivot it for a wide matrix:
        ``df.pivot(columns="symbol", values="close")``). ``adjusted`` applies splits and
        dividends.
        """
        names = _symbols(symbols)
        if len(names) > 1:
            names = sorted(names)
        # several symbols: one request (remote), one Arrow stream
        table = self._t.bars(names, timeframe, _time_param(start), _time_param(end), adjusted)
        if len(names) == 1 and "symbol" in table.column_names:
            table = table.drop_columns(["symbol"])
        if "timeframe" in table.column_names:
            table = table.drop_columns(["timeframe"])
        return frame(table, as_, categorical=("source", "symbol"))

    def trades(
        self, symbol: str, start: TimeLike = None, end: TimeLike = None, *, as_: As = "pandas"
    ) -> Any:
        """Stored trades of a symbol in ``[start, end)``: indexed by ``ts`` (tz-aware UTC),
        with price, size, side, trade_id and source."""
        table = self._t.trades(_symbols(symbol)[0], _time_param(start), _time_param(end))
        return frame(table.drop_columns(["symbol"]), as_, categorical=("source", "side"))

    def coverage(
        self,
        symbols: str | Sequence[str] | None = None,
        timeframe: str | None = None,
        *,
        as_: As = "pandas",
    ) -> Any:
        """What is stored: one row per (symbol, timeframe) with ``bars``, ``first`` and
        ``last`` (bar open times, UTC); all symbols and timeframes unless narrowed."""
        names = sorted(_symbols(symbols)) if symbols else None
        return frame(self._t.coverage(names, timeframe), as_, index=None)

    def actions(
        self, symbol: str, start: TimeLike = None, end: TimeLike = None, *, as_: As = "pandas"
    ) -> Any:
        """Stored corporate actions of a symbol, indexed by ex-date (``ts``): ``kind``
        (split or dividend), ``value`` (the split ratio, 4.0 = 4-for-1, or the cash per
        share) and ``source``."""
        table = self._t.actions(_symbols(symbol)[0], _time_param(start), _time_param(end))
        return frame(table.drop_columns(["symbol"]), as_, categorical=("kind", "source"))

    def latest(self, symbol: str) -> dict[str, Any]:
        """The newest price of a symbol and the time of the bar (or trade) it comes from."""
        return self._t.latest(_symbols(symbol)[0])

    # -- jobs -------------------------------------------------------------------------------

    def jobs(self, limit: int = 20, *, as_: As = "pandas") -> Any:
        """The newest ingest jobs."""
        rows = self._t.jobs(limit)
        table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})
        return frame(table, as_, index=None)

    def ingest(
        self,
        provider: str,
        symbols: str | Sequence[str],
        timeframe: str = "1d",
        *,
        start: TimeLike = None,
        end: TimeLike = None,
        period: str | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Fetch ``symbols`` from ``provider`` (yahoo, alpaca, binance, synthetic …) and store
        them as one recorded job; returns the job (status, rows, per-symbol results)."""
        with _Progress(enabled=progress, label=f"ingest {provider}") as bar:
            return self._t.ingest(
                provider,
                _symbols(symbols),
                timeframe,
                _time_param(start),
                _time_param(end),
                period,
                bar.update,
            )

    # -- quality, roll-ups, repair, import ---------------------------------------------------

    def validate(
        self,
        symbols: str | Sequence[str] | None = None,
        timeframe: str | Sequence[str] | None = None,
        *,
        start: TimeLike = None,
        end: TimeLike = None,
    ) -> ValidationReport:
        """Check stored bars against the quality rules (all series, or those of ``symbols``
        and ``timeframe``) in ``[start, end)``, as `marketlake validate`; the report is
        stored. Returns a :class:`ValidationReport` (``.findings``, ``.series``, ``.summary``)."""
        frames = [timeframe] if isinstance(timeframe, str) else list(timeframe or [])
        body = {
            "symbols": _symbols(symbols) if symbols else None,
            "timeframes": frames or None,
            "start": _time_param(start),
            "end": _time_param(end),
        }
        return ValidationReport.of(self._t.task("validate", body))

    def aggregate(
        self,
        symbols: str | Sequence[str] | None = None,
        from_tf: str = "1m",
        to_tf: str | Sequence[str] = ("5m", "1h", "1d"),
        *,
        start: TimeLike = None,
        end: TimeLike = None,
        replace_sources: bool | None = None,
        as_: As = "pandas",
    ) -> Any:
        """Build roll-ups from stored ``from_tf`` bars to each of ``to_tf`` (as
        `marketlake aggregate`); one row per series built (bars, inserted, first, last …)."""
        targets = [t.strip() for t in to_tf.split(",")] if isinstance(to_tf, str) else list(to_tf)
        body = {
            "symbols": _symbols(symbols) if symbols else None,
            "from_tf": from_tf,
            "to": [t for t in targets if t],
            "start": _time_param(start),
            "end": _time_param(end),
            "replace_sources": replace_sources,
        }
        rows = self._t.task("aggregate", body)["rows"]
        return _rows(rows, as_, times=("first", "last", "partial"))

    def repair(
        self,
        symbol: str,
        timeframe: str = "1m",
        *,
        provider: str | None = None,
        start: TimeLike = None,
        end: TimeLike = None,
    ) -> dict[str, Any]:
        """Re-fetch only the missing ranges of a stored series (as `marketlake repair`); the
        finished job, its ``summary`` holding ``filled``, ``missing_after`` and ``ranges``."""
        body = {
            "symbol": _symbols(symbol)[0],
            "timeframe": timeframe,
            "provider": provider,
            "start": _time_param(start),
            "end": _time_param(end),
        }
        return self._t.task("repair", body)

    def import_csv(
        self,
        path: str | Any,
        *,
        symbol: str,
        timeframe: str | None = None,
        tz: str | None = None,
        on_error: Literal["fail", "skip"] = "fail",
        replace: bool = False,
        delimiter: str = ",",
        date_format: str | None = None,
        decimal: Literal[".", ","] = ".",
    ) -> dict[str, Any]:
        """Import a CSV file of bars for ``symbol`` (as `marketlake import-csv`); the
        finished job. Through a server the file is uploaded (within its body size limit)."""
        options = {
            "symbol": _symbols(symbol)[0],
            "timeframe": timeframe,
            "tz": tz,
            "on_error": on_error,
            "replace": replace,
            "delimiter": delimiter,
            "date_format": date_format,
            "decimal": decimal,
        }
        return self._t.import_csv(str(path), options)

    # -- backtests --------------------------------------------------------------------------

    def backtest(
        self,
        strategy: str,
        symbols: str | Sequence[str],
        timeframe: str = "1d",
        *,
        start: TimeLike = None,
        end: TimeLike = None,
        portfolio: bool = False,
        config: dict[str, Any] | None = None,
        **params: Any,
    ) -> BacktestRun:
        """Run and store a backtest; ``params`` are the strategy's (``fast=10, slow=30``),
        ``config`` the trading rules (``{"commission_bps": 5, "fill": "close"}``);
        ``portfolio=True`` (or a portfolio strategy) trades all symbols on one cash account."""
        from marketlake.backtest.portfolio import PORTFOLIO_STRATEGIES

        body: dict[str, Any] = {
            "strategy": strategy,
            "symbols": _symbols(symbols),
            "timeframe": timeframe,
            "start": _time_param(start),
            "end": _time_param(end),
            "params": params,
            **(config or {}),
        }
        if portfolio or strategy in PORTFOLIO_STRATEGIES:
            body["kind"] = "portfolio"
        return BacktestRun.of(self._t.backtest(body))

    def walk_forward(
        self,
        strategy: str,
        symbols: str | Sequence[str],
        timeframe: str = "1d",
        *,
        grid: dict[str, Sequence[Any]],
        start: TimeLike = None,
        end: TimeLike = None,
        windows: int = 5,
        train_ratio: float = 3.0,
        anchor: Literal["rolling", "anchored"] = "rolling",
        objective: str = "sharpe",
        config: dict[str, Any] | None = None,
    ) -> BacktestRun:
        """Walk-forward optimisation: parameters chosen in-sample by ``objective`` over
        ``grid`` (``{"fast": [5, 10], "slow": [20, 50]}``), traded out-of-sample. ``.equity``
        is the stitched out-of-sample curve, ``.trades`` one row per window, and
        ``.stats["stability"]`` the parameter-stability table."""
        body: dict[str, Any] = {
            "kind": "walk_forward",
            "strategy": strategy,
            "symbols": _symbols(symbols),
            "timeframe": timeframe,
            "start": _time_param(start),
            "end": _time_param(end),
            "grid": {k: list(v) for k, v in grid.items()},
            "windows": windows,
            "train_ratio": train_ratio,
            "anchor": anchor,
            "objective": objective,
            **(config or {}),
        }
        return BacktestRun.of(self._t.backtest(body))

    def sweep(
        self,
        strategy: str,
        symbols: str | Sequence[str],
        timeframe: str = "1d",
        *,
        grid: dict[str, Sequence[Any]],
        start: TimeLike = None,
        end: TimeLike = None,
        sort: str = "sharpe",
        config: dict[str, Any] | None = None,
    ) -> Any:
        """Backtest every combination of ``grid`` (``{"fast": [5, 10], "slow": [20, 50]}``)
        and store the result (as `marketlake backtest sweep`); a DataFrame ranked by
        ``sort``, best first, one row per combination. ``df.attrs["id"]`` is the stored
        sweep (``marketlake backtest show ID``)."""
        body: dict[str, Any] = {
            "strategy": strategy,
            "symbols": _symbols(symbols),
            "timeframe": timeframe,
            "start": _time_param(start),
            "end": _time_param(end),
            "grid": {k: list(v) for k, v in grid.items()},
            "sort": sort,
            **(config or {}),
        }
        found = self._t.task("sweep", body)
        df = _rows(found["rows"], "pandas", times=("start", "end"))
        df.attrs.update(id=found["id"], sort=found["sort"], skipped=found["skipped"])
        return df

    # -- live -------------------------------------------------------------------------------

    def alerts(self, limit: int = 100, *, as_: As = "pandas") -> Any:
        """Stored alerts, newest first."""
        rows = self._t.alerts(limit)
        table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})
        return frame(table, as_, index=None)

    def metrics(self, *, as_: As = "pandas") -> Any:
        """The latest streaming analytics per symbol."""
        rows = self._t.metrics()
        table = (
            pa.Table.from_pylist(rows) if rows else pa.table({"symbol": pa.array([], pa.string())})
        )
        return frame(table, as_, index=None)


def _times(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    for column in columns:
        if column in df.columns:
            df[column] = pd.to_datetime(df[column], utc=True, format="ISO8601")
    return df


def _rows(rows: list[dict[str, Any]], as_: As, *, times: Sequence[str] = ()) -> Any:
    """JSON rows (times as ISO strings) as a frame with tz-aware UTC times."""
    import pandas as pd

    df = _times(pd.DataFrame(rows), times)
    if as_ == "pandas":
        return df
    table = pa.Table.from_pandas(df, preserve_index=False)
    return frame(table, as_, index=None)


@dataclass
class ValidationReport:
    """A stored validation report: ``.findings`` (one row per finding: rule, severity,
    symbol, timeframe, ts, end_ts, message, values), ``.series`` (one row per series:
    bars, expected, missing, errors, warnings, score) and ``.summary`` (counts per rule,
    totals); ``.id`` is the report (`marketlake validate --show ID`)."""

    id: str
    job_id: str
    summary: dict[str, Any]
    findings: pd.DataFrame
    series: pd.DataFrame

    @classmethod
    def of(cls, record: dict[str, Any]) -> ValidationReport:
        import pandas as pd

        columns = ["rule", "severity", "symbol", "timeframe", "ts", "end_ts", "message", "values"]
        findings = pd.DataFrame(record.get("findings") or [], columns=columns)
        findings = _times(findings, ("ts", "end_ts"))
        summary = dict(record.get("summary") or {})
        series = _times(pd.DataFrame(summary.get("series") or []), ("first", "last"))
        return cls(str(record["id"]), str(record["job_id"]), summary, findings, series)

    @property
    def errors(self) -> int:
        return int(self.summary.get("errors", 0))

    @property
    def warnings(self) -> int:
        return int(self.summary.get("warnings", 0))


class _Progress:
    """A Rich progress bar in terminals and notebooks (Rich renders in Jupyter too)."""

    def __init__(self, *, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._bar = Progress(
                BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=None)
        return self

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total or None)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
