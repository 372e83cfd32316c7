"""The local transport: the store opened in this process, the same code the CLI and API run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pyarrow as pa

from marketlake.config import Settings, SettingsInvalid, load_settings
from marketlake.errors import ConfigError, InputError, NotFoundError
from marketlake.schema import Instrument, Timeframe, normalize_symbol, parse_time
from marketlake.store import Store, open_store

T = TypeVar("T")


def run_sync(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from synchronous code, also inside Jupyter (whose event
    loop is already running in this thread: the work then runs on a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


class LocalTransport:
    """Opens ``uri`` (default: the configured store) on first use."""

    def __init__(self, uri: str | None = None, settings: Settings | None = None) -> None:
        try:
            self.settings = settings or (load_settings(store=uri) if uri else load_settings())
        except SettingsInvalid as exc:
            raise ConfigError(str(exc)) from None
        self.name = self.settings.store
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.settings.store)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def instruments(self) -> list[dict[str, Any]]:
        from marketlake.api.models import InstrumentOut

        auto = self.store.auto_registered()
        return [
            InstrumentOut(**i.model_dump(), auto_registered=i.symbol in auto).model_dump(
                mode="json"
            )
            for i in self.store.list_instruments()
        ]

    def instrument(self, symbol: str) -> dict[str, Any]:
        from marketlake.api.models import InstrumentOut

        found = self.store.instrument(symbol)
        auto = bool(self.store.auto_registered([symbol]))
        return InstrumentOut(**found.model_dump(), auto_registered=auto).model_dump(mode="json")

    def add_instrument(self, fields: dict[str, Any]) -> dict[str, Any]:
        instrument = Instrument(**fields)
        with self.store.transaction():
            self.store.add_instrument(instrument)
        return self.instrument(instrument.symbol)

    def remove_instrument(self, symbol: str) -> None:
        self.store.delete_instrument(symbol)

    def bars(
        self,
        symbols: list[str],
        timeframe: str,
        start: str | None,
        end: str | None,
        adjusted: bool,
    ) -> pa.Table:
        if len(symbols) > 1:  # what GET /api/v1/bars?symbols=… answers
            from marketlake.api.routes.datasets import bars_table

            return bars_table(self.store, sorted(symbols), timeframe, start, end, adjusted)
        symbol = symbols[0]
        tf = Timeframe.parse(timeframe)
        begin = parse_time(start, param="start") if start else None
        stop = parse_time(end, param="end") if end else None
        self.store.instrument(symbol)  # an unknown symbol is NotFoundError, as in the API
        if adjusted:
            from marketlake.timeseries.adjust import read_adjusted

            return read_adjusted(self.store, symbol, tf, begin, stop)
        table: pa.Table = self.store.read_bars(symbol, tf, begin, stop).table
        return table

    def trades(self, symbol: str, start: str | None, end: str | None) -> pa.Table:
        from marketlake.api.routes.datasets import trades_table

        return trades_table(self.store, symbol, start, end)

    def coverage(self, symbols: list[str] | None, timeframe: str | None) -> pa.Table:
        from marketlake.api.routes.datasets import coverage_table

        return coverage_table(self.store, symbols, timeframe)

    def actions(self, symbol: str, start: str | None, end: str | None) -> pa.Table:
        from marketlake.api.routes.datasets import actions_table

        return actions_table(self.store, symbol, start, end)

    def task(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """validate, aggregate, repair or sweep: the functions the API's routes call."""
        from marketlake.api.routes import tasks

        request: Any
        try:
            if kind == "sweep":
                return tasks.sweep(self.store, tasks.SweepRequest(**body))
            model = {
                "validate": tasks.ValidateRequest,
                "aggregate": tasks.AggregateRequest,
                "repair": tasks.RepairRequest,
            }[kind]
            request = model(**body)
        except ValueError as exc:
            raise InputError(_first_problem(exc)) from None
        if kind == "validate":
            found = tasks.validate(self.settings, self.store, request)
        elif kind == "aggregate":
            found = tasks.aggregate(self.settings, self.store, request)
        else:
            found = tasks.repair(self.settings, self.store, request)
        return found

    def import_csv(self, path: str, options: dict[str, Any]) -> dict[str, Any]:
        from pathlib import Path

        from marketlake.api.routes.tasks import ImportOptions, import_file

        try:
            checked = ImportOptions(**options)
        except ValueError as exc:
            raise InputError(_first_problem(exc)) from None
        if not Path(path).is_file():
            raise InputError(f"no such file: {path}", param="path")
        return import_file(self.settings, self.store, path, checked)

    def latest(self, symbol: str) -> dict[str, Any]:
        from marketlake.api.routes.prices import _latest_price

        symbol = normalize_symbol(symbol)
        self.store.instrument(symbol)
        body = _latest_price(self.store, symbol)
        if body is None:
            raise NotFoundError(
                f"no prices stored for {symbol}; ingest bars or stream trades first"
            )
        found: dict[str, Any] = json.loads(body)
        return found

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        from marketlake.api.routes.jobs import _job

        return [_job(j).model_dump(mode="json") for j in self.store.list_jobs(limit, None)]

    def ingest(
        self,
        provider: str,
        symbols: list[str],
        timeframe: str,
        start: str | None,
        end: str | None,
        period: str | None,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]:
        from marketlake.ingest.jobs import run_ingest
        from marketlake.providers import get_provider
        from marketlake.timeseries.times import resolve_range

        begin, stop = resolve_range(start, end, period)
        if begin is None or stop is None:
            raise InputError("give start (and end) or period", param="start")
        source = get_provider(provider, self.settings)
        fractions = dict.fromkeys(symbols, 0.0)

        def report(symbol: str, rows: int, done: float) -> None:
            # the bar counts symbols done, in thousandths, so partial progress shows
            fractions[symbol] = done
            if progress is not None:
                progress(int(sum(fractions.values()) * 1000), len(symbols) * 1000)

        async def work() -> Any:
            try:
                return await run_ingest(
                    self.store, source, symbols, timeframe, begin, stop, progress=report
                )
            finally:
                await source.aclose()

        result = run_sync(work)
        return self.job(result.job_id)

    def job(self, job_id: str) -> dict[str, Any]:
        from marketlake.api.routes.jobs import _job

        return _job(self.store.get_job(job_id)).model_dump(mode="json")

    def backtest(self, body: dict[str, Any]) -> dict[str, Any]:
        from marketlake.api.routes.backtests import BacktestRequest, _run
        from marketlake.backtest.runs import get_backtest

        try:
            request = BacktestRequest(**body)
        except ValueError as exc:
            raise InputError(str(exc).splitlines()[-1] if str(exc) else "bad backtest") from None
        backtest_id = _run(self.store, request)
        return get_backtest(self.store, backtest_id)

    def alerts(self, limit: int) -> list[dict[str, Any]]:
        raise InputError("alerts() needs a server for now: connect to its URL")

    def metrics(self) -> list[dict[str, Any]]:
        from marketlake.api.routes.metrics import read_metrics

        return [m.model_dump(mode="json") for m in read_metrics(self.store)]


def _first_problem(exc: ValueError) -> str:
    """A pydantic error as one line, as the API's 422 detail says it."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", exc)).removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return str(exc).splitlines()[0]
