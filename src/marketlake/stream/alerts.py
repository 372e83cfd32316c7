"""Alert rules and the engine that checks them on every event.

Rules come from ``config/alert_rules.yml`` and from the store's ``alert_rules``
table (the API writes there). Kinds: ``price_above``, ``price_below``,
``price_cross``, ``pct_change``, ``volatility_above``, ``drawdown_below`` and
``volume_spike``. A rule is evaluated on a whole batch of observations at once
(the per-event values :meth:`SymbolAnalytics.update_many` returns), so each
event costs a few vector operations per rule.

A rule fires when its condition *becomes* true (de-duplication: it stays quiet
while the condition holds) and at most once per ``cooldown`` of event time.
An alert's id is derived from the rule, the symbol and the triggering event,
so the same event processed twice (a redelivery after a crash) yields the
same alert, which the store keeps once. Rules are re-read while running; a
bad file raises :class:`ConfigError` naming the rule and the field, and the
rules in force stay in force.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from marketlake.errors import ConfigError, ConflictError, NotFoundError
from marketlake.schema import from_epoch_us, normalize_symbol
from marketlake.store.base import Store
from marketlake.stream.analytics import Array, Observed

log = logging.getLogger(__name__)
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration_s(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"5m"``, ``"1h"`` or ``"1d"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value).strip())
        if match is None:
            raise ValueError(f"{value!r} is not a duration; use seconds or 30s, 5m, 1h, 1d")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Direction = Literal["up", "down", "both"]
Verdict = tuple[Array, Array]
"""Per event: whether a rule's condition holds, and the value it is about."""


class _Rule(BaseModel):
    """Fields every rule has."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    symbol: str = Field("*", description="A symbol, or * for every symbol")
    cooldown: float = Field(0.0, description="Seconds (or 30s, 5m …) between two firings")
    message: str | None = Field(
        None,
        max_length=500,
        description="Text with {symbol}, {value}, {price} and {rule}, e.g. {value:.2f}",
    )

    @field_validator("message")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            check_template(value)
        return value

    @field_validator("symbol", mode="before")
    @classmethod
    def _symbol(cls, value: object) -> str:
        if not isinstance(value, str):  # str() would turn null into a symbol named NONE
            raise ValueError(
                "must be a symbol or * for every symbol, as text (in YAML, "
                "quote a numeric ticker: '7203')"
            )
        return "*" if value == "*" else normalize_symbol(value)

    @field_validator("cooldown", mode="before")
    @classmethod
    def _cooldown(cls, value: object) -> float:
        return parse_duration_s(value)

    def evaluate(self, obs: Observed, bucket_s: float) -> Verdict:
        """The rule's condition at every event of ``obs`` (a few vector operations)."""
        raise NotImplementedError


class PriceAbove(_Rule):
    kind: Literal["price_above"]
    threshold: float

    def evaluate(self, obs: Observed, bucket_s: float) -> Verdict:
        return obs.price > self.threshold, obs.price


class PriceBelow(_Rule):
    kind: Literal["price_below"]
    threshold: float

    def evaluate(self, obs: Observed, bucket_s: float) -> Verdict:
        return obs.price < self.threshold, obs.price


class PriceCross(_Rule):
    """Fires on every crossing: the side (``price >= level`` or below) changes."""

    kind: Literal["price_cross"]
    level: float
    direction: Direction = "both"

    def evaluate(self, obs: Observed, bucket_s: float) -> Verdict:
        prev, price, level = obs.prev_price, obs.price, self.level
        up = (prev < level) & (price >= level)
        down = (prev >= level) & (price < level)
        hit = up if self.direction == "up" else down if self.direction == "down" else up | down
        return hit, price


class PctChange(_Rule):
    kind: Literal["pct_change"]
    window: float = Field(description="Look-back: a whole number of buckets, e.g. 5m")
    threshold: float = Field(gt=0, description="Percent")
    direction: Direction = "both"

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: object) -> float:
        return parse_duration_s(value)

    def buckets(self, bucket_s: float) -> int:
        """The window in buckets (at least one)."""
        return max(1, round(self.window / bucket_s))

    def evaluate(self, obs: Observed, bucket_s: float) -> Verdict:
        v, limit = obs.pct[self.buckets(bucket_s)], self.threshold
        if self.direction == "up":
            return v >= limit, v
        if self.direction == "down":
            return v <= -limit, v
        return np.abs(v) >= limit, v


class VolatilityAbove(_Rule):
    kind: Literal["volatility_above"]
    threshold: float = Field(gt=0, description="Annualised, as a fraction (0.8 = 80 %)")

    def evaluate(self, obs: Observed, bucket_s: float) -> Verdict:
        return obs.volatility > self.threshold, obs.volatility


class DrawdownBelow(_Rule):
    kind: Literal["drawdown_below"]
    threshold: float = Field(lt=0, gt=-1, description="A negative fraction, -0.05 = -5 %")
    rolling: bool = Field(False, description="From the rolling-window peak, not the running one")

    def evaluate(self, obs: Observed, bucket_s: float) -> Verdict:
        v = obs.rolling_drawdown if self.rolling else obs.drawdown
        return v < self.threshold, v


class VolumeSpike(_Rule):
    kind: Literal["volume_spike"]
    factor: float = Field(gt=1, description="Bucket volume above factor x the window average")

    def evaluate(self, obs: Observed, bucket_s: float) -> Verdict:
        with np.errstate(all="ignore"):
            ratio = obs.bucket_volume / obs.avg_bucket_volume
        return (obs.avg_bucket_volume > 0) & (ratio > self.factor), ratio


Rule = Annotated[
    PriceAbove
    | PriceBelow
    | PriceCross
    | PctChange
    | VolatilityAbove
    | DrawdownBelow
    | VolumeSpike,
    Field(discriminator="kind"),
]
_RULE = TypeAdapter(Rule)
RULE_KINDS = (
    "price_above",
    "price_below",
    "price_cross",
    "pct_change",
    "volatility_above",
    "drawdown_below",
    "volume_spike",
)


MESSAGE_FIELDS = ("symbol", "value", "price", "rule")
_SAMPLE = {"symbol": "BTCUSDT", "value": 1.5, "price": 67012.5, "rule": "r"}
# [[fill]align][sign][z][#][0][width][grouping][.precision][type], width and precision short
_SPEC_RE = re.compile(r"^(.?[<>=^])?[-+ ]?z?#?0?(\d{1,3})?[,_]?(\.\d{1,2})?[bcdeEfFgGnosxX%]?$")


def check_template(text: str) -> None:
    """Refuse a message template that would fail (or blow up) when the rule fires.

    Fields are {symbol}, {value}, {price} and {rule}; a format spec is a plain one
    with a width of at most 3 digits and a precision of at most 2 (``{value:.2f}``).
    """
    import string

    fields = ", ".join("{" + f + "}" for f in MESSAGE_FIELDS)
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(
            f"not a valid template ({exc}); write literal braces as {{{{ }}}}"
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in MESSAGE_FIELDS:
            raise ValueError(f"unknown field {{{name}}}; a message may use {fields}")
        if conversion not in (None, "s", "r", "a") or not _SPEC_RE.match(spec or ""):
            raise ValueError(
                f"format {{{name}:{spec}}} is not allowed; use a short spec such as "
                "{value:.2f} or {value:>10.4g}"
            )
    try:
        text.format(**_SAMPLE)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"does not format ({exc}); use a spec such as {{value:.2f}}") from None


def parse_rule(data: object, *, where: str = "alert rule") -> Rule:
    """Validate one rule; a bad one raises :class:`ConfigError` naming rule and field."""
    name = data.get("id") if isinstance(data, dict) else None
    label = f"{where} {name!r}" if name else where
    try:
        return _RULE.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        if loc and isinstance(data, dict) and loc[0] == data.get("kind"):
            loc = loc[1:]  # the discriminated union puts the kind first
        if first["type"] in ("union_tag_not_found", "union_tag_invalid"):
            loc, msg = ["kind"], f"must be one of {', '.join(RULE_KINDS)}"
        else:
            msg = first["msg"]
        raise ConfigError(f"{label}: field {'.'.join(loc) or '?'!r}: {msg}") from None


def parse_rules(data: object, *, source: str) -> list[Rule]:
    """Rules from the parsed YAML of a rule file: ``{rules: [...]}`` or a list."""
    items = data.get("rules", []) if isinstance(data, dict) else data
    if items is None:
        return []
    if not isinstance(items, list):
        raise ConfigError(f"{source}: expected a list under 'rules'")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(items, start=1):
        rule = parse_rule(item, where=f"{source}: alert rule #{i}")
        if rule.id in seen:
            raise ConfigError(f"{source}: alert rule #{i}: field 'id': {rule.id!r} is used twice")
        seen.add(rule.id)
        rules.append(rule)
    return rules


def load_rule_file(path: Path) -> list[Rule]:
    """The rules of a YAML file; a missing file has none."""
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_rules(data, source=str(path))


@dataclass(frozen=True)
class RuleSet:
    """The rules in force, looked up by symbol."""

    rules: tuple[Rule, ...] = ()
    _cache: dict[str, list[Rule]] = field(default_factory=dict, compare=False, repr=False)

    def for_symbol(self, symbol: str) -> list[Rule]:
        found = self._cache.get(symbol)
        if found is None:
            found = self._cache[symbol] = [r for r in self.rules if r.symbol in ("*", symbol)]
        return found

    def max_lookback(self, bucket_s: float) -> int:
        """Buckets of history the percent-change rules need."""
        return max((r.buckets(bucket_s) for r in self.rules if isinstance(r, PctChange)), default=0)


@dataclass(slots=True)
class Alert:
    """One firing of a rule; ``seq`` counts the firings of the rule for the symbol."""

    id: str
    rule_id: str
    symbol: str
    ts_us: int
    kind: str
    value: float
    message: str
    seq: int

    def row(self) -> dict[str, Any]:
        """The row of the ``alerts`` table."""
        return {
            "id": self.id,
            "rule_id": self.rule_id,
            "symbol": self.symbol,
            "ts": from_epoch_us(self.ts_us),
            "kind": self.kind,
            "value": self.value,
            "message": self.message,
            "seq": self.seq,
        }

    def as_json(self) -> dict[str, Any]:
        row = self.row()
        row["ts"] = row["ts"].isoformat().replace("+00:00", "Z")
        return row


@dataclass(slots=True)
class _Armed:
    rule: Rule
    cooldown_us: int
    edge: bool  # the condition is itself an edge (a crossing): every hit counts
    active: bool = False
    last_us: int | None = None
    seq: int = 0


class AlertEngine:
    """Checks the rules of a symbol after each of its observations; collects alerts."""

    def __init__(self, rules: RuleSet, bucket_s: float) -> None:
        self.bucket_s = bucket_s
        self.rules = rules
        self._armed: dict[str, list[_Armed]] = {}
        self._fired: list[Alert] = []
        self.disabled: dict[str, str] = {}
        """Rules that failed at run time (id → why): skipped until their definition changes."""

    def set_rules(self, rules: RuleSet) -> None:
        """Switch to new rules; unchanged rules keep their cooldown and de-dup state."""
        old = {(s, a.rule.id): a for s, armed in self._armed.items() for a in armed}
        same = {r.id for r in rules.rules if r in self.rules.rules}
        self.disabled = {k: v for k, v in self.disabled.items() if k in same}
        self.rules = rules
        self._armed = {}
        for symbol in {s for s, _ in old}:
            self._armed[symbol] = [
                old[(symbol, r.id)]
                if (symbol, r.id) in old and old[(symbol, r.id)].rule == r
                else self._arm(r)
                for r in rules.for_symbol(symbol)
            ]

    def _arm(self, rule: Rule) -> _Armed:
        return _Armed(rule, int(rule.cooldown * 1e6), isinstance(rule, PriceCross))

    def armed(self, symbol: str) -> list[_Armed]:
        armed = self._armed.get(symbol)
        if armed is None:
            armed = self._armed[symbol] = [self._arm(r) for r in self.rules.for_symbol(symbol)]
        return armed

    def seed(self, symbol: str, history: dict[str, tuple[int, int]]) -> None:
        """Restore ``{rule_id: (last firing µs, firings)}`` from stored alerts."""
        for armed in self.armed(symbol):
            if armed.rule.id in history:
                armed.last_us, armed.seq = history[armed.rule.id]

    def forget(self, symbol: str) -> None:
        self._armed.pop(symbol, None)

    def lookbacks(self, armed: list[_Armed]) -> list[int]:
        """The percent-change look-backs (in buckets) that ``armed`` rules read."""
        return [a.rule.buckets(self.bucket_s) for a in armed if isinstance(a.rule, PctChange)]

    def check(self, symbol: str, obs: Observed, armed: list[_Armed]) -> None:
        """Evaluate ``armed`` (from :meth:`armed`) at every event of ``obs``.

        Vector work per rule; only the events where a condition turns true are
        looked at one by one (for the cooldown).
        """
        for a in armed:
            if a.rule.id in self.disabled:
                continue
            try:
                self._check_rule(a, symbol, obs)
            except Exception as exc:  # noqa: BLE001 - a rule must never take the worker down
                self.disabled[a.rule.id] = f"{type(exc).__name__}: {exc}"
                log.error(
                    "alert rule %s disabled until it is changed: %s",
                    a.rule.id,
                    self.disabled[a.rule.id],
                )

    def _check_rule(self, a: _Armed, symbol: str, obs: Observed) -> None:
        hit, values = a.rule.evaluate(obs, self.bucket_s)
        if a.edge:
            rising = hit
        else:
            before = np.empty_like(hit)
            before[0] = a.active
            before[1:] = hit[:-1]
            rising = hit & ~before
        a.active = bool(hit[-1])
        for i in np.flatnonzero(rising).tolist():
            ts = int(obs.ts[i])
            if a.last_us is not None and ts - a.last_us < a.cooldown_us:
                continue
            a.last_us = ts
            a.seq += 1
            self._fired.append(self._alert(a, symbol, ts, float(obs.price[i]), float(values[i])))

    def _alert(self, a: _Armed, symbol: str, ts: int, price: float, value: float) -> Alert:
        rule = a.rule
        key = f"{rule.id}|{symbol}|{ts}|{price!r}".encode()
        text = (rule.message or _DEFAULT_MESSAGES[rule.kind]).format(
            symbol=symbol, value=value, rule=rule.id, price=price
        )
        return Alert(
            hashlib.sha1(key).hexdigest()[:24], rule.id, symbol, ts, rule.kind, value, text, a.seq
        )

    def drain(self) -> list[Alert]:
        fired, self._fired = self._fired, []
        return fired


_DEFAULT_MESSAGES = {
    "price_above": "{symbol} price {value:.10g} is above the rule {rule} threshold",
    "price_below": "{symbol} price {value:.10g} is below the rule {rule} threshold",
    "price_cross": "{symbol} price {value:.10g} crossed the rule {rule} level",
    "pct_change": "{symbol} moved {value:+.3f} % over the rule {rule} window",
    "volatility_above": "{symbol} volatility {value:.2%} is above the rule {rule} threshold",
    "drawdown_below": "{symbol} drawdown {value:.2%} is below the rule {rule} threshold",
    "volume_spike": "{symbol} volume is {value:.1f}x its average (rule {rule})",
}


# -- where rules live: the file and the store ----------------------------------------------


class RuleSource:
    """Rules of ``path`` and of the store, re-read when either changes.

    :meth:`load` raises on a bad file (use it at start-up); :meth:`poll`
    logs the error, keeps the rules in force and remembers it in ``error``.
    """

    def __init__(self, path: Path | None, store: Store | None = None) -> None:
        self.path = path
        self.store = store
        self.error: str | None = None
        self._seen: tuple[Any, ...] | None = None
        self.current = RuleSet()

    def _fingerprint(self) -> tuple[Any, ...]:
        file_part: tuple[int, int] | None = None
        if self.path is not None and self.path.exists():
            stat = self.path.stat()
            file_part = (stat.st_mtime_ns, stat.st_size)
        return (file_part, tuple(sorted((r["id"], r["definition"]) for r in self._stored())))

    def _stored(self) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        return self.store.alert_rules()

    def load(self) -> RuleSet:
        """Read both sources now; raises :class:`ConfigError` for a bad rule file."""
        fingerprint = self._fingerprint()
        rules = load_rule_file(self.path) if self.path is not None else []
        ids = {r.id for r in rules}
        for row in self._stored():
            try:
                rule = parse_rule(json.loads(row["definition"]), where="stored alert rule")
            except (ConfigError, ValueError) as exc:
                log.error("skipping stored alert rule %s: %s", row["id"], exc)
                continue
            if rule.id in ids:
                log.warning("stored alert rule %s is shadowed by the rule file", rule.id)
                continue
            rules.append(rule)
        self._seen = fingerprint
        self.current = RuleSet(tuple(rules))
        self.error = None
        return self.current

    def poll(self) -> RuleSet | None:
        """New rules when a source changed since the last read, else None."""
        fingerprint = self._fingerprint()
        if fingerprint == self._seen:
            return None
        try:
            return self.load()
        except ConfigError as exc:
            self._seen = fingerprint
            self.error = exc.message
            log.error("alert rules not reloaded, the previous rules stay active: %s", exc.message)
            return None


def list_rules(path: Path | None, store: Store) -> list[dict[str, Any]]:
    """Every rule in force with its source (``file`` or ``api``)."""
    file_rules = load_rule_file(path) if path is not None else []
    out = [{**r.model_dump(), "source": "file"} for r in file_rules]
    ids = {r.id for r in file_rules}
    out.extend(
        {**json.loads(row["definition"]), "source": "api"}
        for row in store.alert_rules()
        if row["id"] not in ids
    )
    return out


def add_rule(store: Store, data: dict[str, Any], path: Path | None = None) -> Rule:
    """Validate a rule and store it; an id in use is a :class:`ConflictError`."""
    rule = parse_rule(data)
    in_file = {r.id for r in load_rule_file(path)} if path is not None else set()
    if rule.id in in_file or not store.add_alert_rule(rule.id, rule.model_dump_json()):
        raise ConflictError(
            f"alert rule {rule.id!r} exists already; delete it first or pick another id"
        )
    return rule


def delete_rule(store: Store, rule_id: str) -> None:
    """Remove a stored rule (rules of the file are changed in the file)."""
    if not store.delete_alert_rule(rule_id):
        raise NotFoundError(
            f"no stored alert rule {rule_id!r}; rules from the rule file are "
            "removed by editing the file"
        )
