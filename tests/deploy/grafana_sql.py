"""Grafana's query text expansion for PostgreSQL panels, so the tests can run panel SQL.

Grafana turns a panel's SQL into the statement it sends in two steps, reproduced
here for a fixed time range and interval:

1. the browser interpolates template variables (``$name``, ``${name}``,
   ``${name:format}``, ``[[name]]``); for SQL data sources a single value has its
   quotes doubled and a multi-value variable becomes ``'a','b'``;
2. the PostgreSQL plugin replaces ``$__interval``/``$__interval_ms``/``$__unixEpochFrom()``
   and the macros (``$__timeFilter``, ``$__timeGroup``, ``$__timeGroupAlias``, …) with
   plain SQL — the same text as Grafana's ``pkg/tsdb/grafana-postgresql-datasource/macros.go``
   produces without the TimescaleDB option.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}"
)
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def rfc3339(moment: datetime) -> str:
    """Go's ``time.RFC3339Nano`` of a UTC instant (no trailing zeros in the fraction)."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def interval_seconds(text: str) -> float:
    """Seconds of a Grafana interval such as ``5m``, ``1h`` or ``100ms``."""
    match = _INTERVAL.match(text.strip().strip("'"))
    if match is None:
        raise ValueError(f"error parsing interval {text}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _go_number(value: float) -> str:
    """A float as Go's ``%v`` prints it for the magnitudes of intervals."""
    return str(int(value)) if value.is_integer() else repr(value)


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class PanelContext:
    """What Grafana knows when it runs a panel: the range, the interval, the variables."""

    start: datetime
    end: datetime
    interval: str = "1h"
    variables: Mapping[str, str | Sequence[str]] = field(default_factory=dict)

    def _variable_text(self, name: str, fmt: str | None) -> str | None:
        if name not in self.variables:
            return None
        value = self.variables[name]
        if isinstance(value, str):
            return _quote_literal(value) if fmt == "sqlstring" else value.replace("'", "''")
        if fmt == "csv":
            return ",".join(value)
        return ",".join(_quote_literal(v) for v in value)

    def interpolate_variables(self, sql: str) -> str:
        """Step 1: the template variables, as Grafana's SQL data sources format them."""

        def replace(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2) or match.group(4)
            fmt = match.group(3) or match.group(6)
            text = self._variable_text(name, fmt)
            return match.group(0) if text is None else text

        return _VARIABLE.sub(replace, sql)

    def _macro(self, name: str, args: list[str]) -> str:
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{rfc3339(self.start)}' AND '{rfc3339(self.end)}'"
        if name == "__timeFrom":
            return f"'{rfc3339(self.start)}'"
        if name == "__timeTo":
            return f"'{rfc3339(self.end)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            if len(args) < 2:
                raise ValueError(f"macro {name} needs time column and interval")
            seconds = _go_number(interval_seconds(args[1]))
            group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        if name == "__unixEpochFilter":
            low, high = int(self.start.timestamp()), int(self.end.timestamp())
            return f"{args[0]} >= {low} AND {args[0]} <= {high}"
        raise ValueError(f"unknown macro {name!r}")

    def interpolate_macros(self, sql: str) -> str:
        """Step 2: the PostgreSQL plugin's global substitutions and macros."""
        seconds = interval_seconds(self.interval)
        sql = sql.replace("$__interval_ms", str(int(seconds * 1000)))
        sql = sql.replace("$__interval", self.interval)
        sql = sql.replace("$__unixEpochFrom()", str(int(self.start.timestamp())))
        sql = sql.replace("$__unixEpochTo()", str(int(self.end.timestamp())))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            # Grafana < 5.3 compatibility: `$__timeGroup(...),` means `$__timeGroupAlias(...)`
            after = sql.find(match.group(0)) + len(match.group(0))
            if name == "__timeGroup" and sql[after : after + 1] == ",":
                name = "__timeGroupAlias"
            args = [arg.strip(" ") for arg in match.group(2).split(",")]
            return self._macro(name, args)

        return _MACRO.sub(replace, sql)

    def expand(self, sql: str) -> str:
        """The statement Grafana sends to PostgreSQL for ``sql``."""
        return self.interpolate_macros(self.interpolate_variables(sql))
