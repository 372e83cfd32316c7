"""PostgreSQL binary COPY to and from Arrow, vectorised with NumPy.

Writing: :func:`encode_rows` turns an Arrow table into the ``COPY ... FROM STDIN
(FORMAT binary)`` wire format. Rows are grouped by their layout (the byte widths
of their variable-length and null fields); every group becomes one NumPy record
array whose fields are filled column by column, so no Python object is built
per row. Group order is irrelevant to COPY, and tables of bars have one group
per (symbol, timeframe, source) length pattern, usually a handful.

Reading: :class:`FastSelect` builds a select list whose binary rows have a
fixed layout except for one trailing text field (nullable numbers come back as
``coalesce(x, 0)`` plus a bit in a null-flags column, and all text columns are
joined by U+001F into the last field). :func:`decode_rows` slices the fixed part
of every row with one Arrow kernel, views it as big-endian NumPy columns and
splits the trailing text with Arrow string kernels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Array = np.ndarray[Any, Any]

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00Z in Unix microseconds
SEPARATOR = "\x1f"
CHUNK_ROWS = 65_536


class CopyFormatError(ValueError):
    """The server's binary rows do not have the layout the select list promised."""


def _kind(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "ts"
    if pa.types.is_float64(arrow_type):
        return "f8"
    if pa.types.is_int64(arrow_type):
        return "i8"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "text"
    raise TypeError(f"binary COPY does not handle Arrow type {arrow_type}")


# -- encoding ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Column:
    """One column prepared for encoding: values, per-row widths (-1 = NULL)."""

    kind: str
    values: Array | None  # numbers (fixed kinds)
    offsets: Array | None  # text: the value boundaries in ``data`` (one more than values)
    data: Array | None  # text: the UTF-8 bytes
    codes: Array | None  # text with few distinct values: the value index of every row
    widths: Array | int  # an int when every row has the same width


def _prepare(column: pa.ChunkedArray | pa.Array, kind: str) -> _Column:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    nulls = array.is_null().to_numpy(zero_copy_only=False) if array.null_count else None
    if kind == "text":
        return _prepare_text(array, nulls)
    if kind == "ts":
        values = array.cast(pa.int64()).fill_null(0).to_numpy() - PG_EPOCH_US
    else:
        values = array.fill_null(0).to_numpy()
    widths = 8 if nulls is None else np.where(nulls, -1, 8)
    return _Column(kind, values, None, None, None, _collapse(widths))


def _prepare_text(array: pa.Array, nulls: Array | None) -> _Column:
    """Text columns with few distinct values (symbols, sources) are encoded per value."""
    n = len(array)
    encoded = pc.dictionary_encode(array)
    codes: Array | None = None
    if 0 < len(encoded.dictionary) <= max(16, n // 16):
        codes = encoded.indices.fill_null(0).to_numpy().astype(np.intp)
        array = encoded.dictionary
    array = array.cast(pa.large_string())
    m = len(array)
    offsets = np.frombuffer(array.buffers()[1], np.int64)[array.offset : array.offset + m + 1]
    data = (
        np.frombuffer(array.buffers()[2], np.uint8) if array.buffers()[2] else np.zeros(0, np.uint8)
    )
    lengths = np.diff(offsets)
    per_row = lengths if codes is None else lengths[codes]
    widths: Array | int = per_row if nulls is None else np.where(nulls, -1, per_row)
    return _Column("text", None, offsets, data, codes, _collapse(widths))


def _collapse(widths: Array | int) -> Array | int:
    if isinstance(widths, int) or len(widths) == 0:
        return widths if isinstance(widths, int) else 0
    first = int(widths[0])
    return first if bool(np.all(widths == first)) else widths


def _groups(columns: Sequence[_Column], n: int) -> list[Array | None]:
    """Row indices of every layout group (``None``: all rows share one layout)."""
    varying = [c.widths for c in columns if not isinstance(c.widths, int)]
    if not varying:
        return [None]
    codes = []
    for widths in varying:
        assert not isinstance(widths, int)
        _, inverse = np.unique(widths, return_inverse=True)
        codes.append(inverse.astype(np.int64))
    key = codes[0]
    for extra in codes[1:]:
        key = key * (int(extra.max()) + 1) + extra
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    return list(np.split(order, bounds))


def _text_bytes(col: _Column, rows: Array | None, width: int) -> Array:
    """The ``width`` bytes of every selected row of a text column, as an (m, width) matrix."""
    assert col.offsets is not None
    assert col.data is not None
    starts = col.offsets[:-1]
    if col.codes is None:
        starts = starts if rows is None else starts[rows]
        gathered: Array = col.data[starts[:, None] + np.arange(width)]
        return gathered
    codes = col.codes if rows is None else col.codes[rows]
    fits = np.flatnonzero(np.diff(col.offsets) == width)  # the values this group uses
    values = np.zeros((len(starts), width), np.uint8)
    values[fits] = col.data[starts[fits][:, None] + np.arange(width)]
    if len(values) == 1:
        return np.broadcast_to(values[0], (len(codes), width))
    return values[codes]


def _encode_group(columns: Sequence[_Column], rows: Array | None, n_rows: int) -> Array:
    first = 0 if rows is None else int(rows[0])
    widths = [c.widths if isinstance(c.widths, int) else int(c.widths[first]) for c in columns]
    names, formats, offsets = ["n"], [">i2"], [0]
    position = 2
    for i, (col, width) in enumerate(zip(columns, widths, strict=True)):
        names.append(f"w{i}")
        formats.append(">i4")
        offsets.append(position)
        position += 4
        if width > 0:
            names.append(f"v{i}")
            formats.append(
                f"({width},)u1" if col.kind == "text" else ">f8" if col.kind == "f8" else ">i8"
            )
            offsets.append(position)
            position += width
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": position})
    records = np.empty(n_rows, dtype=dtype)
    records["n"] = len(columns)
    for i, (col, width) in enumerate(zip(columns, widths, strict=True)):
        records[f"w{i}"] = width
        if width <= 0:
            continue
        if col.kind == "text":
            records[f"v{i}"] = _text_bytes(col, rows, width)
        else:
            assert col.values is not None
            records[f"v{i}"] = col.values if rows is None else col.values[rows]
    return records.view(np.uint8)


def encode_rows(table: pa.Table, *, chunk_rows: int = CHUNK_ROWS) -> Iterator[memoryview]:
    """The binary COPY stream of ``table`` (header, rows, trailer) in pieces.

    Columns are sent in the table's order; the COPY statement must list the
    target columns in the same order.
    """
    kinds = [_kind(field.type) for field in table.schema]
    yield memoryview(HEADER)
    for start in range(0, table.num_rows, chunk_rows):
        part = table.slice(start, chunk_rows)
        columns = [_prepare(part.column(i), kind) for i, kind in enumerate(kinds)]
        for rows in _groups(columns, part.num_rows):
            size = part.num_rows if rows is None else len(rows)
            yield _encode_group(columns, rows, size).data
    yield memoryview(TRAILER)


# -- decoding ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FastSelect:
    """A select list over ``schema`` whose binary rows :func:`decode_rows` can slice.

    ``expressions`` maps a column to the SQL that produces it (default: its name).
    """

    schema: pa.Schema
    expressions: tuple[tuple[str, str], ...] = ()

    def _expr(self, name: str) -> str:
        return dict(self.expressions).get(name, name)

    @property
    def fixed(self) -> list[pa.Field]:
        return [f for f in self.schema if _kind(f.type) != "text"]

    @property
    def texts(self) -> list[pa.Field]:
        return [f for f in self.schema if _kind(f.type) == "text"]

    @property
    def nullable(self) -> list[pa.Field]:
        return [f for f in self.schema if f.nullable]

    def select_list(self) -> str:
        """The SQL select list (fixed columns, null flags, joined text)."""
        items = []
        for f in self.fixed:
            expr = self._expr(f.name)
            items.append(f"coalesce({expr}, 0)" if f.nullable else expr)
        flags = [
            f"({self._expr(f.name)} IS NULL)::int * {1 << i}" for i, f in enumerate(self.nullable)
        ]
        items.append(f"({' + '.join(flags)})::int4" if flags else "0::int4")
        texts = [
            f"coalesce({self._expr(f.name)}, '')" if f.nullable else self._expr(f.name)
            for f in self.texts
        ]
        if texts:
            items.append(" || chr(31) || ".join(texts))
        return ", ".join(items)

    @property
    def prefix_bytes(self) -> int:
        """Bytes of the fixed part of a row: field count, fixed fields and flags."""
        return 2 + 12 * len(self.fixed) + 8 + (4 if self.texts else 0)


@dataclass(slots=True)
class CopyData:
    """A binary COPY stream as received: the bytes, and the length of every message.

    The server sends one message per row (the header rides with the first row
    or alone, the trailer alone or with the last row).
    """

    buffer: bytearray = field(default_factory=bytearray)
    lengths: list[int] = field(default_factory=list)


def _row_bounds(data: CopyData) -> Array:
    """Start offsets of every row in ``data.buffer``, and the end of the last one."""
    buffer = data.buffer
    if not buffer.startswith(SIGNATURE) or not buffer.endswith(TRAILER):
        raise CopyFormatError("not a binary COPY stream")
    header = 19 + int.from_bytes(buffer[15:19], "big")
    end = len(buffer) - len(TRAILER)
    lengths = np.asarray(data.lengths, dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    bounds[0] = header
    if lengths[0] == header:
        bounds = bounds[1:]
    if len(bounds) >= 2 and bounds[-2] == end:
        bounds = bounds[:-1]
    else:
        bounds[-1] = end
    return bounds


def decode_rows(data: CopyData, spec: FastSelect) -> pa.Table:
    """Decode the binary COPY stream of a :class:`FastSelect` query into ``spec.schema``."""
    if not data.lengths:
        return spec.schema.empty_table()
    bounds = _row_bounds(data)
    n = len(bounds) - 1
    if n == 0:
        return spec.schema.empty_table()
    rows = pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(bounds), pa.py_buffer(data.buffer)]
    )
    width = spec.prefix_bytes
    lengths = np.diff(bounds)
    if int(lengths.min()) < width:
        raise CopyFormatError("rows shorter than their fixed part")
    prefix = pc.binary_slice(rows, 0, width)
    matrix = np.frombuffer(prefix.buffers()[2], np.uint8)[: n * width].reshape(n, width)
    count = np.ascontiguousarray(matrix[:, 0:2]).view(">i2").ravel()
    if bool(np.any(count != len(spec.fixed) + 1 + (1 if spec.texts else 0))):
        raise CopyFormatError("unexpected field count")
    columns: dict[str, Any] = {}
    position = 2
    for f in spec.fixed:
        columns[f.name] = _fixed(matrix, position, f)
        position += 12
    flags = np.ascontiguousarray(matrix[:, position + 4 : position + 8]).view(">i4").ravel()
    if spec.texts:
        text_length = np.ascontiguousarray(matrix[:, width - 4 : width]).view(">i4").ravel()
        if bool(np.any(text_length != lengths - width)):
            raise CopyFormatError("row lengths do not match their text field")
        tail = pc.binary_slice(rows, width, int(lengths.max()))
        columns.update(_split_texts(tail, spec))
    for bit, f in enumerate(spec.nullable):
        mask = (flags & (1 << bit)) != 0
        if mask.any():
            columns[f.name] = pc.if_else(pa.array(mask), pa.nulls(n, f.type), columns[f.name])
    return pa.table([columns[f.name] for f in spec.schema], schema=spec.schema)


def _fixed(matrix: Array, position: int, field: pa.Field) -> pa.Array:
    raw = np.ascontiguousarray(matrix[:, position + 4 : position + 12])
    kind = _kind(field.type)
    if kind == "f8":
        return pa.array(raw.view(">f8").ravel().astype(np.float64), pa.float64())
    values = raw.view(">i8").ravel().astype(np.int64)
    if kind == "ts":
        return pa.array(values + PG_EPOCH_US, pa.int64()).cast(field.type)
    return pa.array(values, pa.int64())


def _split_texts(tail: pa.Array, spec: FastSelect) -> dict[str, pa.Array]:
    strings = tail.cast(pa.large_string())
    texts = spec.texts
    if len(texts) == 1:
        return {texts[0].name: strings.cast(texts[0].type)}
    parts = pc.split_pattern(strings, SEPARATOR)
    if bool(pc.any(pc.not_equal(pc.list_value_length(parts), len(texts))).as_py()):
        raise CopyFormatError("a text value contains the U+001F separator")
    out: dict[str, pa.Array] = {}
    for i, f in enumerate(texts):
        out[f.name] = pc.list_element(parts, i).cast(f.type)
    return out
