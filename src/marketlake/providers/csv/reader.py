"""Bars from CSV files: header mapping, time parsing and row checks, streamed in batches.

:class:`CsvBarReader` reads a file with ``pyarrow.csv.open_csv`` in large blocks
and turns each block into canonical bars plus a list of :class:`BadRow`, each
naming the file line, the column, the value and what is wrong with it. The
fast path lets Arrow infer column types; when a later block holds a value that
does not fit the inferred type, reading restarts at that block with every
column as text, so one bad cell costs a re-parse, never a wrong result.

Headers are matched case-insensitively: a time column (``date``, ``datetime``,
``timestamp``, ``time``, or ``date`` plus ``time``), ``open high low close``,
``adj close`` (used only when there is no ``close``), ``volume``, and optional
``trades`` and ``vwap``; other columns are ignored and reported. Times may be
ISO dates or datetimes (with ``Z`` or an offset), or epoch seconds,
milliseconds, microseconds or nanoseconds (told apart by magnitude); naive
datetimes need an explicit timezone (``--tz``). Row numbers assume one record
per line (no quoted line breaks).

:class:`CsvProvider` offers ``<csv_dir>/<SYMBOL>.csv`` files through the
:class:`~marketlake.providers.base.Provider` contract.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from marketlake.errors import DataError, InputError
from marketlake.providers.base import Provider
from marketlake.providers.csv.rows import (
    EARLIEST_US,
    LATEST_US,
    BadRow,
    RowChecks,
    infer_timeframe,
    parse_times,
    time_hint,
)
from marketlake.schema import BAR_SCHEMA, Timeframe, constant_column, normalize_symbol

BLOCK_BYTES = 16 << 20
_TIME_NAMES = ("datetime", "timestamp", "date time", "date", "time", "ts", "open time")
_FIELD_NAMES = {
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "adj close": "adj close",
    "adjusted close": "adj close",
    "adjclose": "adj close",
    "volume": "volume",
    "vol": "volume",
    "trades": "trades",
    "number of trades": "trades",
    "vwap": "vwap",
    "count": "trades",
    "quote volume": "quote volume",
    "quote asset volume": "quote volume",
}
BINANCE_KLINE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
"""The columns of a Binance kline, in the order of the REST answer and of the public
data dumps (data.binance.vision): ``count`` is the number of trades, the vwap is
``quote_volume / volume``."""
_HEADERLESS = ("time", "open", "high", "low", "close", "volume", "trades", "vwap")
_OTHER_DELIMITERS = {";": ("';'", "';'"), "\t": ("tabs", "$'\\t'"), "|": ("'|'", "'|'")}


@dataclass(frozen=True, slots=True)
class Layout:
    """How the file's columns map onto bar fields."""

    names: list[str]  # the header as written (or generated when there is none)
    header: bool
    time: list[int]  # one column, or date + time
    fields: dict[str, int]  # bar field -> column index
    ignored: list[str]
    header_lines: int = 1  # lines before the data when there is a header (yfinance: 3)
    kind: str = ""  # a recognised format: "binance", "yfinance", "metatrader"
    tickers: tuple[str, ...] = ()  # yfinance: the Ticker row


@dataclass(slots=True)
class CsvBatch:
    """Canonical bars of one block, the file line of each row, and the bad lines."""

    bars: pa.Table
    lines: np.ndarray[Any, np.dtype[np.int64]]
    bad: list[BadRow]
    rows: int  # data lines in the block, blank ones excluded
    bytes_read: int


def _key(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.strip().strip('"').strip().strip("<>").lower())


def _first_line(path: Path) -> tuple[str, int]:
    """The first line of the file (BOM removed) and the file size; checks for binary data."""
    lines, size = _first_lines(path)
    return lines[0], size


def _first_lines(path: Path) -> tuple[list[str], int]:
    """The first (up to three) lines of the file (BOM removed) and the file size."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(65536)
    if not head.strip():
        raise InputError(
            f"{path} is empty; expected a header line such as "
            "Date,Open,High,Low,Close,Volume and data rows"
        )
    nul = head.find(b"\0")
    if nul >= 0:
        raise InputError(f"{path} is binary data (a NUL byte at offset {nul}), not a CSV text file")
    raw = head.splitlines()[:3]
    for number, line in enumerate(raw, 1):
        try:
            line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{path} is not UTF-8 text: line {number} has the byte "
                f"0x{line[exc.start]:02x}; convert the file (e.g. iconv -f latin1 -t utf-8 "
                "FILE > FILE.utf8) and import that"
            ) from None
    return [raw[0].decode("utf-8-sig"), *(r.decode("utf-8") for r in raw[1:])], size


def detect_layout(path: Path, delimiter: str = ",") -> Layout:
    """Read the first line: header or data, and which column holds what."""
    lines, _ = _first_lines(path)
    line = lines[0]
    tokens = [t.strip() for t in line.split(delimiter)]
    yfinance = _yfinance_layout(path, lines, delimiter)
    if yfinance is not None:
        return yfinance
    if len(tokens) < 2:
        for other, (name, option) in _OTHER_DELIMITERS.items():
            if other != delimiter and line.count(other) >= 4:
                raise InputError(
                    f"{path} separates columns with {name}, not {delimiter!r}; "
                    f"pass --delimiter {option}"
                )
        raise InputError(
            f"{path} has a single column on line 1; a bar file needs a time and "
            "open, high, low, close columns separated by commas"
        )
    keys = [_key(t) for t in tokens]
    known = set(_TIME_NAMES) | set(_FIELD_NAMES)
    if not any(k in known for k in keys):
        if _is_binance_kline(tokens):
            names = list(BINANCE_KLINE_COLUMNS)
            layout = _map_columns(path, names, [_key(n) for n in names], header=False)
            return replace(layout, kind="binance")
        if re.match(r"^[\d\-+.:TZ /]+$", tokens[0]) and _TIME_OF_DAY.match(tokens[1]):
            names = ["date", "time", "open", "high", "low", "close", "volume"][: len(tokens)]
            names += [f"column {i + 1}" for i in range(len(names), len(tokens))]
            layout = _map_columns(path, names, [_key(n) for n in names], header=False)
            return replace(layout, kind="metatrader")
        if re.match(r"^[\d\-+.:TZ /]+$", tokens[0]):
            names = [
                *_HEADERLESS[: len(tokens)],
                *(f"column {i + 1}" for i in range(len(_HEADERLESS), len(tokens))),
            ]
            return _map_columns(path, names, [_key(n) for n in names], header=False)
        raise InputError(
            f"{path}: line 1 {line[:80]!r} is neither a header naming the columns "
            "(date, open, high, low, close, volume) nor a data row"
        )
    return _map_columns(path, tokens, keys, header=True)


_TIME_OF_DAY = re.compile(r"^\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?$")


def _yfinance_layout(path: Path, lines: list[str], delimiter: str) -> Layout | None:
    """yfinance >= 0.2.51 writes three header rows: ``Price,Close,…``, ``Ticker,AAPL,…``
    and ``Date,,,…``; the first names the fields, the second the symbol of each column."""
    if len(lines) < 3:
        return None
    rows = [[t.strip() for t in line.split(delimiter)] for line in lines[:3]]
    if [_key(r[0]) for r in rows] != ["price", "ticker", _key(rows[2][0])] or any(rows[2][1:]):
        return None
    if _key(rows[2][0]) not in ("date", "datetime"):
        return None
    tickers = tuple(dict.fromkeys(t for t in rows[1][1:] if t))
    if len(tickers) > 1:
        raise InputError(
            f"{path} is a yfinance download of {len(tickers)} tickers "
            f"({', '.join(tickers)}); download one ticker per file "
            "(yf.download('AAPL')) or split the columns"
        )
    names = [rows[2][0], *rows[0][1:]]
    layout = _map_columns(path, names, [_key(n) for n in names], header=True)
    return replace(layout, header_lines=3, kind="yfinance", tickers=tickers)


def _is_binance_kline(tokens: list[str]) -> bool:
    """A headerless row of the 12 Binance kline fields: open and close time as epoch
    integers, the close time after the open time."""
    if len(tokens) != len(BINANCE_KLINE_COLUMNS) or not all(
        re.match(r"^-?\d+(\.\d*)?$", t) for t in tokens
    ):
        return False
    opened, closed = tokens[0], tokens[6]
    return opened.isdigit() and closed.isdigit() and int(closed) > int(opened)


def _map_columns(path: Path, names: list[str], keys: list[str], *, header: bool) -> Layout:
    time = _time_columns(path, names, keys)
    fields: dict[str, int] = {}
    ignored: list[str] = []
    for i, key in enumerate(keys):
        target = _FIELD_NAMES.get(key)
        if i in time:
            continue
        if target is None or target in fields:
            ignored.append(names[i])
            continue
        fields[target] = i
    if "close" not in fields and "adj close" in fields:
        fields["close"] = fields.pop("adj close")
    elif "adj close" in fields:
        ignored.append(names[fields.pop("adj close")])
    missing = [f for f in ("open", "high", "low", "close") if f not in fields]
    if missing:
        raise InputError(
            f"{path} has no {', '.join(missing)} column (columns: "
            f"{', '.join(names)}); name them open, high, low, close"
        )
    return Layout(names, header, time, fields, ignored)


def _time_columns(path: Path, names: list[str], keys: list[str]) -> list[int]:
    if "date" in keys and "time" in keys and not {"datetime", "timestamp"} & set(keys):
        return [keys.index("date"), keys.index("time")]
    for candidate in _TIME_NAMES:
        if candidate in keys:
            return [keys.index(candidate)]
    raise InputError(
        f"{path} has no time column (columns: {', '.join(names)}); name it "
        "date, datetime, timestamp or time"
    )


@dataclass
class CsvBarReader:
    """Stream one CSV file of bars for one symbol as :class:`CsvBatch` es.

    ``timeframe`` None means: infer it from the spacing of the first block.
    ``tz`` is the IANA timezone of naive datetimes in the file.
    """

    path: Path
    symbol: str
    timeframe: Timeframe | None = None
    tz: str | None = None
    delimiter: str = ","
    source: str = "csv"
    block_bytes: int = BLOCK_BYTES
    date_format: str | None = None
    decimal: str = "."
    layout: Layout = field(init=False)
    size: int = field(init=False)
    notes: list[str] = field(init=False, default_factory=list)
    checks: RowChecks | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.symbol = normalize_symbol(self.symbol)
        if self.decimal not in (".", ","):
            raise InputError(f"--decimal {self.decimal!r} must be . or ,", param="decimal")
        if self.decimal == self.delimiter:
            raise InputError(
                "--decimal , needs another column separator; pass --delimiter ';'",
                param="decimal",
            )
        if not self.path.exists():
            raise InputError(f"{self.path} does not exist")
        if self.path.is_dir():
            raise InputError(f"{self.path} is a directory; give a CSV file")
        if not self.path.is_file():  # a FIFO or a device would block or never end
            raise InputError(f"{self.path} is not a regular file; give a CSV file")
        self.layout = detect_layout(self.path, self.delimiter)
        self.size = self.path.stat().st_size
        if self.layout.kind == "binance":
            self.notes.append("a Binance kline file: trades = count, vwap = quote_volume / volume")
        if self.layout.kind == "yfinance":
            self.notes.append("a yfinance download (three header rows)")
            if self.layout.tickers and normalize_symbol(self.layout.tickers[0]) != self.symbol:
                self.notes.append(
                    f"the file's Ticker row says {self.layout.tickers[0]}; "
                    f"imported as {self.symbol}"
                )
        if self.layout.ignored:
            self.notes.append(f"ignored columns: {', '.join(self.layout.ignored)}")

    def batches(self) -> Iterator[CsvBatch]:
        """Every block of the file as canonical bars and bad rows, in file order."""
        types: dict[str, pa.DataType] | None = None
        if self.checks is not None:
            self.checks.relabelled = 0  # a second pass over the file counts afresh
        for data, first_line, position in self._chunks():
            batch, invalid = self._read_chunk(data, types)
            if types is None:
                types = self._types(batch)
            if batch.num_rows == 0 and not invalid:
                continue
            if self.checks is None:
                self.checks = RowChecks(
                    self._timeframe(batch), self.tz, self.date_format, self.decimal
                )
            yield self._parse(batch, invalid, first_line, position, self.checks)

    def _chunks(self) -> Iterator[tuple[bytes, int, int]]:
        """The file in blocks of whole lines: (bytes, number of its first line, bytes read).

        Reading block by block ourselves keeps memory bounded (Arrow's streaming reader
        reads ahead without limit) and keeps line numbers exact.
        """
        line = self._first_line_number()
        with self.path.open("rb") as handle:
            for _ in range(self.layout.header_lines if self.layout.header else 0):
                handle.readline()
            carry = b""
            while True:
                data = handle.read(self.block_bytes)
                if not data:
                    break
                data = carry + data
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
                carry = data[cut:]
                block = data[:cut]
                if line == 1 and block.startswith(b"\xef\xbb\xbf"):
                    block = block[3:]
                self._check_utf8(block, line)
                yield block, line, handle.tell() - len(carry)
                line += block.count(b"\n")
            if carry.strip():
                self._check_utf8(carry, line)
                yield carry, line, handle.tell()

    def _check_utf8(self, block: bytes, line: int) -> None:
        """Refuse a block that is not UTF-8, naming the line of the first bad byte (Arrow
        would fail on it with a traceback, or read it as garbled text)."""
        if block.isascii():
            return
        try:
            block.decode("utf-8")
        except UnicodeDecodeError as exc:
            at = line + block.count(b"\n", 0, exc.start)
            raise InputError(
                f"{self.path} is not UTF-8 text: line {at} has the byte "
                f"0x{block[exc.start]:02x}; convert the file (e.g. iconv -f latin1 -t utf-8 "
                "FILE > FILE.utf8) and import that"
            ) from None

    def _read_chunk(
        self, data: bytes, types: dict[str, pa.DataType] | None, *, threads: bool = True
    ) -> tuple[pa.RecordBatch, list[tuple[int, str]]]:
        """Parse one block; a value that does not fit the types of the first block makes
        this block be read again as text."""
        invalid: list[tuple[int, str]] = []

        def on_invalid(row: Any) -> str:
            invalid.append(
                (
                    -1 if row.number is None else int(row.number),
                    f"has {row.actual_columns} fields, expected {row.expected_columns}",
                )
            )
            return "skip"

        names = [f"c{i}" for i in range(len(self.layout.names))]
        try:
            table = pacsv.read_csv(
                pa.py_buffer(data),
                read_options=pacsv.ReadOptions(
                    column_names=names,
                    use_threads=threads,
                    block_size=max(1 << 20, len(data) // 2 + 1),
                ),
                parse_options=pacsv.ParseOptions(
                    delimiter=self.delimiter,
                    ignore_empty_lines=False,
                    invalid_row_handler=on_invalid,
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types=types,
                    null_values=[""],
                    strings_can_be_null=True,
                    decimal_point=self.decimal,
                ),
            )
        except pa.ArrowInvalid as exc:
            if types is not None and all(t == pa.string() for t in types.values()):
                raise InputError(f"{self.path} cannot be read as CSV: {exc}") from None
            return self._read_chunk(data, dict.fromkeys(names, pa.string()), threads=threads)
        if any(number < 0 for number, _ in invalid):  # threads do not number rows
            return self._read_chunk(data, types, threads=False)
        batches = table.combine_chunks().to_batches()
        batch = batches[0] if batches else pa.RecordBatch.from_pylist([], table.schema)
        return batch, invalid

    def _types(self, batch: pa.RecordBatch) -> dict[str, pa.DataType]:
        """Column types for the later blocks: those Arrow inferred for the first one, with
        whole-number value columns widened to float (text columns are inferred per block)."""
        value_columns = {f"c{i}" for i in self.layout.fields.values()}
        types = {}
        for field_ in batch.schema:
            if pa.types.is_string(field_.type) or pa.types.is_null(field_.type):
                continue
            widen = field_.name in value_columns and pa.types.is_integer(field_.type)
            types[field_.name] = pa.float64() if widen else field_.type
        return types

    def _first_line_number(self) -> int:
        return self.layout.header_lines + 1 if self.layout.header else 1

    @property
    def time_label(self) -> str:
        """The header of the time column(s), for messages."""
        return " ".join(self.layout.names[i] for i in self.layout.time)

    def _timeframe(self, batch: pa.RecordBatch) -> Timeframe:
        if self.timeframe is not None:
            return self.timeframe
        column = self._time_column(batch)
        times = parse_times(column, self.tz, self.date_format)
        usable = times.ok & (times.us >= EARLIEST_US) & (times.us < LATEST_US)
        inferred = infer_timeframe(times.us[usable])
        if inferred is None:
            unreadable = np.flatnonzero(
                ~times.ok & np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False))
            )
            if unreadable.size:  # the real problem, not the timeframe
                i = int(unreadable[0])
                line = self._first_line_number() + i  # the first block: lines are exact
                raise InputError(
                    f"{self.path}: line {line}, column {self.time_label} "
                    f"{column[i].as_py()!r}: {time_hint(self.date_format)}"
                )
            raise InputError(
                f"{self.path}: cannot tell the timeframe from the first rows; "
                "pass --timeframe (e.g. 1m, 1h, 1d)"
            )
        self.notes.append(f"timeframe {inferred} inferred from the spacing of the rows")
        self.timeframe = inferred
        return inferred

    def _time_column(self, batch: pa.RecordBatch) -> pa.Array:
        columns = [batch.column(i) for i in self.layout.time]
        if len(columns) == 1:
            return columns[0]
        as_text = [c.cast(pa.string()) for c in columns]
        return pc.binary_join_element_wise(as_text[0], as_text[1], " ")

    def _parse(
        self,
        batch: pa.RecordBatch,
        invalid: list[tuple[int, str]],
        first: int,
        position: int,
        checks: RowChecks,
    ) -> CsvBatch:
        invalid = [(first + number - 1, problem) for number, problem in invalid]
        lines = np.arange(first, first + batch.num_rows + len(invalid), dtype=np.int64)
        if invalid:
            lines = lines[~np.isin(lines, [line for line, _ in invalid])]
        blank = np.ones(batch.num_rows, dtype=bool)
        for column in batch.columns:
            blank &= np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False))
        values = {"ts": (self._time_column(batch), self.time_label)}
        for name, index in self.layout.fields.items():
            values[name] = (batch.column(index), self.layout.names[index])
        parsed, bad_mask, bad = checks.check(values, lines, ~blank)
        bad += [BadRow(line, "", "", problem) for line, problem in invalid]
        bad.sort(key=lambda b: b.line)
        good = ~blank & ~bad_mask
        bars = self._bars({k: v[good] for k, v in parsed.items()}, int(good.sum()))
        return CsvBatch(bars, lines[good], bad, int((~blank).sum()) + len(invalid), position)

    def _bars(self, parsed: dict[str, np.ndarray[Any, Any]], n: int) -> pa.Table:
        assert self.timeframe is not None
        columns: dict[str, Any] = {
            "symbol": constant_column(self.symbol, n),
            "timeframe": constant_column(str(self.timeframe), n),
            "ts": pa.array(parsed["ts"], pa.int64()).cast(BAR_SCHEMA.field("ts").type),
        }
        for name in ("open", "high", "low", "close"):
            columns[name] = pa.array(parsed[name], pa.float64())
        volume = parsed.get("volume")
        columns["volume"] = pa.array(np.zeros(n) if volume is None else volume, pa.float64())
        trades = parsed.get("trades")
        columns["trades"] = (
            pa.nulls(n, pa.int64())
            if trades is None
            else pa.array(trades, pa.float64(), from_pandas=True).cast(pa.int64())
        )
        vwap = parsed.get("vwap")
        quote = parsed.get("quote volume")
        if vwap is None and quote is not None and volume is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                vwap = np.where(volume > 0, quote / volume, np.nan)  # Binance: quote / base
        columns["vwap"] = (
            pa.nulls(n, pa.float64())
            if vwap is None
            else pa.array(vwap, pa.float64(), from_pandas=True)
        )
        columns["source"] = constant_column(self.source, n)
        return pa.Table.from_pydict(columns, schema=BAR_SCHEMA)


def first_problem(bad: list[BadRow], hint: str) -> DataError:
    """The error for the first bad row, with how to get past it."""
    return DataError(f"{bad[0]}; {hint}", problems=[str(b) for b in bad])


class CsvProvider(Provider):
    """Bars from ``<csv_dir>/<SYMBOL>.csv`` (setting ``MARKETLAKE_CSV_DIR``).

    The whole file is checked before the first batch is yielded, so a file
    with a bad row yields nothing and raises :class:`DataError`.
    """

    name: ClassVar[str] = "csv"
    timeframes: ClassVar[tuple[str, ...]] = ()
    needs_network: ClassVar[bool] = False

    def file_for(self, symbol: str) -> Path:
        """The file of ``symbol``, confined to ``csv_dir`` after resolving symlinks.

        Errors name the file relative to the directory, never the server's path: a
        client of the API must not learn where the server keeps its files.
        """
        name = f"{normalize_symbol(symbol)}.csv"
        root = Path(self.settings.csv_dir).resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise InputError(
                f"{name} resolves outside the CSV directory (MARKETLAKE_CSV_DIR); "
                "the csv provider reads only files inside it",
                param="symbol",
            )
        if not path.is_file():
            raise InputError(
                f"no file {name} in the CSV directory (MARKETLAKE_CSV_DIR); "
                "add it there or check the symbol",
                param="symbol",
            )
        return path

    async def fetch_bars(
        self, symbol: str, timeframe: str | Timeframe, start: datetime, end: datetime
    ) -> AsyncGenerator[pa.Table, None]:
        tf = self.check_timeframe(timeframe)
        reader = CsvBarReader(self.file_for(symbol), symbol, tf, source=self.name)
        for batch in reader.batches():
            if batch.bad:
                raise first_problem(batch.bad, f"fix {reader.symbol}.csv in the CSV directory")
        for batch in reader.batches():
            ts = batch.bars.column("ts")
            keep = pc.and_(
                pc.greater_equal(ts, pa.scalar(start, ts.type)),
                pc.less(ts, pa.scalar(end, ts.type)),
            )
            table = batch.bars.filter(keep)
            if table.num_rows:
                yield table
