"""Data-quality policy, findings and reports, and where reports are kept.

A :class:`QualityPolicy` says for every rule of :mod:`marketlake.quality.rules` what to
do with a bar that breaks it: ``reject`` (not stored), ``flag`` (stored and
reported) or ``off``. It is read from the built-in defaults, then
``config/quality.yml``, then ``MARKETLAKE_QUALITY_*`` settings, later ones winning.

A :class:`QualityReport` holds the findings of one run (an ingest job, a CSV
import, a ``marketlake validate``) and a :class:`SeriesQuality` per (symbol,
timeframe) with its **quality score**: the share of expected bars that are
present and clean. Reports are stored in ``quality_reports`` and their findings in
``quality_findings``.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from marketlake.config import Settings
from marketlake.errors import ConfigError, DataError, NotFoundError
from marketlake.quality.gaps import Gap
from marketlake.schema import from_epoch_us, normalize_symbol
from marketlake.store.base import Store
from marketlake.timeseries.times import iso_z

Action = Literal["reject", "flag", "off"]
Severity = Literal["error", "warning"]
ACTIONS: tuple[Action, ...] = ("reject", "flag", "off")


@dataclass(frozen=True, slots=True)
class Rule:
    """A quality rule: its severity, default action and what it checks."""

    name: str
    severity: Severity
    default: Action
    checks: str
    rejectable: bool = True


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("ohlc", "error", "reject", "low <= open, close <= high"),
        Rule("price", "error", "reject", "prices are positive and finite"),
        Rule("volume", "error", "reject", "volume is finite and not negative"),
        Rule("duplicate", "error", "reject", "one bar per timestamp (same values may repeat)"),
        Rule("misaligned", "error", "reject", "timestamps are bar starts of the timeframe"),
        Rule("vwap", "error", "reject", "vwap, when given, lies inside [low, high]"),
        Rule(
            "closed_day",
            "error",
            "reject",
            "daily bars fall on a trading day of the instrument's calendar",
        ),
        Rule("outside_session", "warning", "flag", "bars lie inside the exchange's sessions"),
        Rule("gap", "warning", "flag", "every expected session bar is present", rejectable=False),
        Rule("stale", "warning", "flag", "the close does not freeze while volume trades"),
        Rule("outlier", "warning", "flag", "returns stay within a robust z-score"),
        Rule("split", "warning", "flag", "no split-like jump without a recorded split"),
    )
}


@dataclass(frozen=True, slots=True)
class QualityPolicy:
    """What to do per rule, and the rules' parameters."""

    actions: Mapping[str, Action] = field(
        default_factory=lambda: {name: rule.default for name, rule in RULES.items()}
    )
    stale_bars: int = 10
    outlier_z: float = 10.0
    split_tolerance: float = 0.03
    split_window_days: int = 3
    max_findings: int = 1000

    def action(self, rule: str) -> Action:
        return self.actions.get(rule, RULES[rule].default)

    def enabled(self, rule: str) -> bool:
        return self.action(rule) != "off"

    def rejects(self, rule: str) -> bool:
        return self.action(rule) == "reject"

    def with_actions(self, **actions: Action) -> QualityPolicy:
        """A copy with some actions changed (checked like the YAML file)."""
        return replace(self, actions={**self.actions, **_checked_actions(actions, "argument")})

    @classmethod
    def from_settings(cls, settings: Settings) -> QualityPolicy:
        """Defaults, then ``<config_dir>/quality.yml``, then explicit ``MARKETLAKE_QUALITY_*``."""
        values: dict[str, Any] = _read_yaml(Path(settings.config_dir) / "quality.yml")
        actions = dict(cls().actions)
        actions.update(_checked_actions(values.pop("rules", None) or {}, "quality.yml rules"))
        explicit = settings.model_fields_set
        if "quality_rules" in explicit:
            actions.update(_checked_actions(settings.quality_rules, "MARKETLAKE_QUALITY_RULES"))
        for name in (
            "stale_bars",
            "outlier_z",
            "split_tolerance",
            "split_window_days",
            "max_findings",
        ):
            if f"quality_{name}" in explicit or name not in values:
                values[name] = getattr(settings, f"quality_{name}")
        unknown = sorted(
            set(values)
            - {"stale_bars", "outlier_z", "split_tolerance", "split_window_days", "max_findings"}
        )
        if unknown:
            raise ConfigError(
                f"quality.yml: unknown key(s) {', '.join(unknown)}; use rules, "
                "stale_bars, outlier_z, split_tolerance, split_window_days, "
                "max_findings"
            )
        return cls(actions=actions, **values)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `rules:` and parameters")
    return data


def _checked_actions(actions: Mapping[str, Any], where: str) -> dict[str, Action]:
    checked: dict[str, Action] = {}
    for name, given in actions.items():
        action = "off" if given is False else given  # YAML 1.1 reads a bare `off` as false
        if name not in RULES:
            raise ConfigError(
                f"{where}: unknown quality rule {name!r}; rules are {', '.join(RULES)}"
            )
        if action not in ACTIONS:
            raise ConfigError(
                f"{where}: action {action!r} for rule {name!r} must be one of reject, flag, off"
            )
        if action == "reject" and not RULES[name].rejectable:
            raise ConfigError(
                f"{where}: rule {name!r} reports missing bars, which cannot be "
                "rejected; use flag or off"
            )
        checked[name] = action
    return checked


# -- findings and reports -------------------------------------------------------------


@dataclass(slots=True)
class Finding:
    """One problem: a bar (``ts``) or a range (``ts`` to ``end_ts``) of one series."""

    rule: str
    severity: Severity
    symbol: str
    timeframe: str
    ts: datetime | None
    end_ts: datetime | None
    values: dict[str, Any]
    message: str
    row: int | None = None  # the row of the validated table, for row rules

    def record(self, report_id: str) -> dict[str, Any]:
        return {
            "report_id": report_id,
            "rule": self.rule,
            "severity": self.severity,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "ts": self.ts,
            "end_ts": self.end_ts,
            "values": json.dumps(_plain(self.values)),
            "message": self.message,
        }


def gap_finding(symbol: str, timeframe: str, gap: Gap) -> Finding:
    """The finding of missing bars ``gap`` of a series."""
    return Finding(
        "gap",
        "warning",
        symbol,
        timeframe,
        from_epoch_us(gap.start),
        from_epoch_us(gap.end),
        {"missing": gap.missing},
        f"{gap.missing} {timeframe} bar(s) missing from {iso_z(gap.start)} to {iso_z(gap.end)}; "
        f"fill them with `marketlake repair {symbol} -t {timeframe}`",
    )


def _plain(value: Any) -> Any:
    """JSON-safe values: NaN and infinities as strings, NumPy scalars as Python ones."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@dataclass(slots=True)
class SeriesQuality:
    """The quality of one (symbol, timeframe) series over the checked range."""

    symbol: str
    timeframe: str
    bars: int = 0
    expected: int = 0
    present: int = 0
    clean: int = 0
    errors: int = 0
    warnings: int = 0
    rejected: int = 0  # bars not stored
    flagged: int = 0  # bars stored with a finding
    first: datetime | None = None
    last: datetime | None = None

    @property
    def missing(self) -> int:
        return self.expected - self.present

    @property
    def score(self) -> float | None:
        """Share of expected bars present and without findings (None: nothing expected)."""
        return round(self.clean / self.expected, 6) if self.expected else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "missing": self.missing, "score": self.score}


@dataclass(slots=True)
class QualityReport:
    """Findings and per-series quality of one validation run."""

    kind: str = "validate"
    rows: int = 0
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    series: list[SeriesQuality] = field(default_factory=list)
    rejected_rows: np.ndarray[Any, Any] = field(default_factory=lambda: np.empty(0, np.int64))
    truncated: bool = False
    id: str | None = None
    job_id: str | None = None

    @property
    def rejected(self) -> int:
        """Bars not stored because a ``reject`` rule caught them."""
        return sum(s.rejected for s in self.series)

    @property
    def errors(self) -> int:
        return sum(n for rule, n in self.counts.items() if RULES[rule].severity == "error")

    @property
    def warnings(self) -> int:
        return sum(n for rule, n in self.counts.items() if RULES[rule].severity == "warning")

    def extend(self, other: QualityReport) -> None:
        """Add another run's findings (e.g. the next batch of a job) to this report."""
        self.rows += other.rows
        self.findings.extend(other.findings)
        for rule, n in other.counts.items():
            self.counts[rule] = self.counts.get(rule, 0) + n
        self.series.extend(other.series)
        self.truncated = self.truncated or other.truncated

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rows": self.rows,
            "findings": sum(self.counts.values()),
            "errors": self.errors,
            "warnings": self.warnings,
            "rejected": self.rejected,
            "counts": dict(sorted(self.counts.items())),
            "truncated": self.truncated,
            "series": [_plain(s.as_dict()) for s in self.series],
        }

    def raise_for_rejected(self, *, first_line: int = 1, limit: int = 20) -> None:
        """Raise :class:`DataError` naming the rejected rows (as lines from ``first_line``)."""
        if not self.rejected:
            return
        problems = [
            f"line {f.row + first_line}: {f.message}"
            for f in self.findings
            if f.row is not None and RULES[f.rule].rejectable and f.severity == "error"
        ]
        problems = problems or [f.message for f in self.findings]
        more = f" (and {self.rejected - limit} more)" if self.rejected > limit else ""
        raise DataError(
            f"{self.rejected} bad row(s): " + "; ".join(problems[:limit]) + more, problems=problems
        )


def save_report(store: Store, report: QualityReport, scope: dict[str, Any]) -> str:
    """Store a report and its findings; return its id."""
    report.id = report.id or uuid.uuid4().hex[:12]
    store.add_quality_report(
        report.id,
        job_id=report.job_id,
        scope=json.dumps(_plain(scope)),
        summary=json.dumps(report.summary()),
        findings=[f.record(report.id) for f in report.findings],
    )
    return report.id


def list_reports(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """The newest reports: id, job, kind, scope, counts, created_at."""
    rows = store.quality_reports(limit)
    return [_report_row(row) for row in rows]


def _report_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "job_id": row["job_id"],
        "created_at": row["created_at"],
        "scope": json.loads(row["scope"] or "{}"),
        "summary": json.loads(row["summary"] or "{}"),
    }


def load_report(store: Store, report_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A stored report and its findings (ordered by symbol, timeframe, time)."""
    row = store.quality_report(report_id)
    if row is None:
        raise NotFoundError(
            f"unknown quality report {report_id}; list them with `marketlake validate --list`"
        )
    findings = store.quality_findings(report_id)
    for finding in findings:
        finding["values"] = json.loads(finding["values"] or "{}")
    return _report_row(row), findings


def latest_scores(store: Store, symbol: str, *, reports: int = 200) -> list[dict[str, Any]]:
    """The newest quality of each timeframe of ``symbol`` among the last ``reports`` reports."""
    symbol = normalize_symbol(symbol)
    found: dict[str, dict[str, Any]] = {}
    for report in list_reports(store, limit=reports):
        for series in report["summary"].get("series", []):
            if series.get("symbol") == symbol and series.get("timeframe") not in found:
                found[series["timeframe"]] = {
                    **series,
                    "report_id": report["id"],
                    "checked_at": report["created_at"],
                }
    return sorted(found.values(), key=lambda s: str(s["timeframe"]))


def scope_of(
    symbols: Sequence[str],
    timeframes: Sequence[str],
    start: datetime | None,
    end: datetime | None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``scope`` JSON of a report (the API filters reports by ``symbols``)."""
    return {
        "symbols": sorted(set(symbols)),
        "timeframes": sorted(set(timeframes)),
        "start": start,
        "end": end,
        **extra,
    }
