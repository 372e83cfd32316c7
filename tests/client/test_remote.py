"""The remote transport's reading of Arrow answers as they arrive."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest

from marketlake.client.remote import _Body

TABLE = pa.table({"a": list(range(20_000)), "b": [str(i) for i in range(20_000)]})


def _stream() -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, TABLE.schema) as writer:
        writer.write_table(TABLE, max_chunksize=3000)
    return bytes(sink.getvalue().to_pybytes())


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    return iter([data[i : i + size] for i in range(0, len(data), size)])


@pytest.mark.parametrize("size", [1, 7, 4096, 65_536, 10**9])
def test_an_ipc_stream_reads_from_chunks_of_any_size(size: int) -> None:
    with pa.ipc.open_stream(_Body(_chunks(_stream(), size))) as reader:
        assert reader.read_all().equals(TABLE)


def test_reads_return_exactly_the_bytes_asked_for_then_the_rest() -> None:
    body = _Body(iter([b"abc", b"", b"defgh", b"ij"]))
    assert [body.read(2), body.read(0), body.read(4), body.read(-1), body.read(3)] == [
        b"ab",
        b"",
        b"cdef",
        b"ghij",
        b"",
    ]
    short = _Body(iter([b"xy"]))
    assert short.read(5) == b"xy"  # the body ended: what there is


def test_a_failure_mid_body_reaches_the_caller() -> None:
    def broken() -> Iterator[bytes]:
        data = _stream()
        yield data[:1000]
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError, match="gone"):
        pa.ipc.open_stream(_Body(broken())).read_all()
