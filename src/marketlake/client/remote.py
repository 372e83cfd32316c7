"""The remote transport: a MarketLake server's REST API; bars travel as Arrow IPC."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from marketlake.errors import (
    AuthError,
    ConflictError,
    InputError,
    MarketLakeError,
    NotFoundError,
)

ARROW = "application/vnd.apache.arrow.stream"


class RemoteTransport:
    """Talks to ``url`` (``http://host:8000``) with ``api_key`` as a bearer token."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.name = self.url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> Any:
        """The server's answer; an error answer raises the project's exception. With
        ``stream`` the body of a good answer is left to the caller to read and close."""
        import httpx

        try:
            request = self._http.build_request(method, path, **kwargs)
            response = self._http.send(request, stream=stream)
            if stream and response.status_code >= 400:
                response.read()
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _unreachable(self, exc: Exception) -> MarketLakeError:
        return MarketLakeError(
            f"cannot reach the MarketLake server at {self.url} ({type(exc).__name__}); "
            "start it with `marketlake serve` or check the URL"
        )

    def instruments(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("GET", "/instruments").json()
        return rows

    def instrument(self, symbol: str) -> dict[str, Any]:
        found: dict[str, Any] = self._call("GET", f"/instruments/{_path(symbol)}").json()
        return found

    def add_instrument(self, fields: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in fields.items() if v is not None}
        created: dict[str, Any] = self._call("POST", "/instruments", json=body).json()
        return created

    def remove_instrument(self, symbol: str) -> None:
        self._call("DELETE", f"/instruments/{_path(symbol)}")

    def bars(
        self,
        symbols: list[str],
        timeframe: str,
        start: str | None,
        end: str | None,
        adjusted: bool,
    ) -> pa.Table:
        params: dict[str, Any] = {"timeframe": timeframe}
        if start:
            params["start"] = start
        if end:
            params["end"] = end
        if adjusted:
            params["adjusted"] = "true"
        if len(symbols) > 1:  # the symbols in one request, one Arrow stream
            tables = [
                self._arrow("/bars", params | {"symbols": ",".join(group)})
                for group in _groups(symbols)
            ]
            return pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        params["format"] = "arrow"
        return self._arrow(f"/bars/{_path(symbols[0])}", params)

    def _arrow(self, path: str, params: dict[str, Any]) -> pa.Table:
        """An Arrow IPC answer, read message by message as it arrives: joining the whole
        body first (``response.content``) cost a third of a 500k-bar request."""
        import httpx

        response = self._call("GET", path, stream=True, params=params, headers={"Accept": ARROW})
        try:
            with pa.ipc.open_stream(_Body(response.iter_bytes())) as reader:
                return reader.read_all()
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        finally:
            response.close()

    def trades(self, symbol: str, start: str | None, end: str | None) -> pa.Table:
        return self._arrow(f"/trades/{_path(symbol)}", _times(start, end))

    def coverage(self, symbols: list[str] | None, timeframe: str | None) -> pa.Table:
        params: dict[str, Any] = {}
        if symbols:
            params["symbols"] = ",".join(symbols)
        if timeframe:
            params["timeframe"] = timeframe
        return self._arrow("/coverage", params)

    def actions(self, symbol: str, start: str | None, end: str | None) -> pa.Table:
        return self._arrow(f"/actions/{_path(symbol)}", _times(start, end))

    def task(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/{kind}/run"  # validate, aggregate, repair, sweep: as POST /ingest/run
        clean = {k: v for k, v in body.items() if v is not None}
        found: dict[str, Any] = self._call("POST", path, json=clean).json()
        return found

    def import_csv(self, path: str, options: dict[str, Any]) -> dict[str, Any]:
        from pathlib import Path

        file = Path(path)
        if not file.is_file():
            raise InputError(f"no such file: {path}", param="path")
        params = {k: v for k, v in options.items() if v is not None}
        if "replace" in params:
            params["replace"] = "true" if params["replace"] else "false"
        try:
            with file.open("rb") as data:
                found: dict[str, Any] = self._call(
                    "POST", "/import/csv", params=params, content=data,
                    headers={"Content-Type": "text/csv"},
                ).json()  # fmt: skip
        except InputError as exc:
            if "MARKETLAKE_API_MAX_BODY_BYTES" not in exc.message:
                raise
            raise InputError(
                f"{file.name} is too large to upload to {self.url}: {exc.message.split(';')[0]}; "
                "raise it on the server or run `marketlake import-csv` there",
                param="path",
            ) from None
        return found

    def latest(self, symbol: str) -> dict[str, Any]:
        found: dict[str, Any] = self._call("GET", f"/prices/{_path(symbol)}/latest").json()
        return found

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("GET", "/jobs", params={"limit": limit}).json()
        return rows

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
        body = {"provider": provider, "symbols": symbols, "timeframe": timeframe}
        body |= {k: v for k, v in (("start", start), ("end", end), ("period", period)) if v}
        accepted = self._call("POST", "/ingest/run", json=body).json()
        while True:
            job: dict[str, Any] = self._call("GET", f"/jobs/{accepted['job_id']}").json()
            done = len((job.get("summary") or {}).get("symbols") or [])
            if progress is not None:
                progress(done, len(symbols))
            if job["status"] not in ("pending", "running"):
                return job
            time.sleep(0.2)

    def backtest(self, body: dict[str, Any]) -> dict[str, Any]:
        clean = {k: v for k, v in body.items() if v is not None}
        created: dict[str, Any] = self._call("POST", "/backtests", json=clean).json()
        return created

    def alerts(self, limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("GET", "/alerts", params={"limit": limit}).json()
        return rows

    def metrics(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("GET", "/metrics/latest").json()
        return rows


class _Body:
    """A streamed body as the file an Arrow IPC reader reads: each read joins only the
    chunks it spans (a message), never the whole body."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending: list[bytes] = []  # after a read: nothing, or the rest of one chunk
        self._size = 0
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or self._size < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._pending.append(chunk)
            self._size += len(chunk)
        if 0 <= size < self._size:  # the read ends inside the last chunk
            last = self._pending[-1]
            cut = len(last) - (self._size - size)
            data = b"".join([*self._pending[:-1], last[:cut]])
            self._pending, self._size = [last[cut:]], self._size - size
            return data
        data = b"".join(self._pending)
        self._pending, self._size = [], 0
        return data


def _groups(symbols: list[str], most: int = 500, chars: int = 4000) -> list[list[str]]:
    """``symbols`` (sorted) in as few requests as ``GET /bars?symbols=`` takes: at most
    ``most`` symbols and ``chars`` characters each (one request but for thousands)."""
    groups: list[list[str]] = [[]]
    size = 0
    for symbol in symbols:
        if groups[-1] and (len(groups[-1]) >= most or size + len(symbol) + 1 > chars):
            groups.append([])
            size = 0
        groups[-1].append(symbol)
        size += len(symbol) + 1
    return groups


def _times(start: str | None, end: str | None) -> dict[str, str]:
    return {k: v for k, v in (("start", start), ("end", end)) if v}


def _path(symbol: str) -> str:
    from urllib.parse import quote

    return quote(symbol, safe="")


def _error(response: Any) -> MarketLakeError:
    """The project's exception for an error answer, with the server's one-line detail."""
    try:
        detail = response.json().get("detail") or response.text
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # a validation error: the first problem
        first = detail[0] if detail else {}
        detail = first.get("msg", str(first)) if isinstance(first, dict) else str(first)
    message = str(detail).strip() or f"HTTP {response.status_code}"
    status = response.status_code
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    if status in (401, 403):
        return AuthError(message)
    if status < 500:
        return InputError(message)
    return MarketLakeError(f"the server failed: {message}")
