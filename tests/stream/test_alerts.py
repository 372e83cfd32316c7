"""Alert rules: each kind, de-duplication, cooldown, hot reload and clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from marketlake.errors import ConfigError, ConflictError, NotFoundError
from marketlake.store import Store
from marketlake.stream.alerts import (
    Alert,
    AlertEngine,
    RuleSet,
    RuleSource,
    add_rule,
    delete_rule,
    list_rules,
    parse_duration_s,
    parse_rule,
    parse_rules,
)
from marketlake.stream.analytics import AnalyticsConfig, SymbolAnalytics

T0 = 1_709_596_800_000_000
MIN = 60_000_000


def _run(
    rules: list[dict[str, Any]],
    prices: list[float],
    *,
    step_us: int = MIN,
    sizes: list[float] | None = None,
    window: int = 5,
) -> list[Alert]:
    """Feed one symbol's prices (one per ``step_us``) and return the alerts fired."""
    rule_set = RuleSet(tuple(parse_rule(r) for r in rules))
    engine = AlertEngine(rule_set, bucket_s=60)
    state = SymbolAnalytics("BTCUSDT", AnalyticsConfig(window=window))
    state.ensure_lookback(rule_set.max_lookback(60))
    ts = T0 + np.arange(len(prices)) * step_us
    _feed(engine, state, ts, prices, sizes)
    return engine.drain()


def _feed(
    engine: AlertEngine,
    state: SymbolAnalytics,
    ts: Any,
    prices: list[float],
    sizes: list[float] | None = None,
) -> None:
    """One batch of observations through the analytics and the symbol's rules."""
    armed = engine.armed(state.symbol)
    observed = state.update_many(
        np.asarray(ts, dtype=np.int64),
        np.asarray(prices, float),
        np.asarray(sizes or [1.0] * len(prices), float),
        lookbacks=engine.lookbacks(armed),
    )
    assert observed is not None
    engine.check(state.symbol, observed, armed)


def _fired_at(alerts: list[Alert]) -> list[int]:
    return [(a.ts_us - T0) // MIN for a in alerts]


def test_price_above_fires_when_the_condition_becomes_true_only() -> None:
    alerts = _run([{"id": "a", "kind": "price_above", "threshold": 100}], [99, 101, 102, 98, 103])
    assert _fired_at(alerts) == [1, 4]
    assert alerts[0].value == 101
    assert alerts[0].message == "BTCUSDT price 101 is above the rule a threshold"
    assert [a.seq for a in alerts] == [1, 2]


def test_price_below_fires_below_threshold() -> None:
    alerts = _run([{"id": "b", "kind": "price_below", "threshold": 50}], [60, 49, 48, 51, 40])
    assert _fired_at(alerts) == [1, 4]


def test_price_cross_respects_direction() -> None:
    prices = [99, 101, 99, 100, 98]
    both = _run([{"id": "x", "kind": "price_cross", "level": 100}], prices)
    up = _run([{"id": "x", "kind": "price_cross", "level": 100, "direction": "up"}], prices)
    down = _run([{"id": "x", "kind": "price_cross", "level": 100, "direction": "down"}], prices)
    assert _fired_at(both) == [1, 2, 3, 4]
    assert _fired_at(up) == [1, 3]
    assert _fired_at(down) == [2, 4]


def test_pct_change_compares_with_the_close_a_window_ago() -> None:
    rule = {"id": "p", "kind": "pct_change", "window": "2m", "threshold": 5, "direction": "up"}
    alerts = _run([rule], [100, 100, 104, 106, 90, 95])
    assert _fired_at(alerts) == [3]
    assert alerts[0].value == pytest.approx(6.0)
    down = _run([{**rule, "direction": "down"}], [100, 100, 104, 106, 90, 95])
    assert _fired_at(down) == [4]
    assert down[0].value == pytest.approx((90 / 104 - 1) * 100)


def test_volatility_above_fires_on_a_volatile_window() -> None:
    alerts = _run(
        [{"id": "v", "kind": "volatility_above", "threshold": 5.0}],
        [100, 100.01, 100.0, 100.01, 90, 100, 90],
    )
    assert _fired_at(alerts) == [4]


def test_drawdown_below_uses_running_or_rolling_peak() -> None:
    prices = [100, 120, 110, 105, 104, 103, 102, 101]
    running = _run([{"id": "d", "kind": "drawdown_below", "threshold": -0.1}], prices)
    rolling = _run(
        [{"id": "d", "kind": "drawdown_below", "threshold": -0.1, "rolling": True}],
        prices,
        window=2,
    )
    assert _fired_at(running) == [3]
    assert running[0].value == pytest.approx(105 / 120 - 1)
    assert rolling == []


def test_volume_spike_compares_bucket_volume_with_the_window_average() -> None:
    alerts = _run(
        [{"id": "s", "kind": "volume_spike", "factor": 3}],
        [1, 1, 1, 1, 1, 1],
        sizes=[2, 2, 2, 7, 2, 10],
    )
    assert _fired_at(alerts) == [3, 5]
    assert alerts[0].value == pytest.approx(3.5)


def test_cooldown_suppresses_firings_within_event_time() -> None:
    rule = {"id": "c", "kind": "price_cross", "level": 100, "cooldown": "3m"}
    alerts = _run([rule], [99, 101, 99, 101, 99, 101])
    assert _fired_at(alerts) == [1, 4]


def test_same_event_gives_the_same_alert_id() -> None:
    rules = [{"id": "a", "kind": "price_above", "threshold": 100}]
    first = _run(rules, [99, 101])
    second = _run(rules, [99, 101])
    assert first[0].id == second[0].id
    assert _run([{**rules[0], "id": "other"}], [99, 101])[0].id != first[0].id


def test_rule_for_another_symbol_is_not_checked() -> None:
    assert (
        _run([{"id": "a", "kind": "price_above", "threshold": 1, "symbol": "ethusdt"}], [5, 6])
        == []
    )


def test_custom_message_template() -> None:
    alerts = _run(
        [
            {
                "id": "a",
                "kind": "price_above",
                "threshold": 1,
                "message": "{symbol} hit {value:.1f} ({rule})",
            }
        ],
        [0.5, 2],
    )
    assert alerts[0].message == "BTCUSDT hit 2.0 (a)"
    assert alerts[0].as_json()["ts"] == "2024-03-05T00:01:00Z"


def test_set_rules_keeps_state_of_unchanged_rules() -> None:
    keep = parse_rule({"id": "k", "kind": "price_above", "threshold": 100})
    engine = AlertEngine(RuleSet((keep,)), bucket_s=60)
    state = SymbolAnalytics("BTCUSDT", AnalyticsConfig(window=3))
    _feed(engine, state, [T0], [101])
    added = parse_rule({"id": "n", "kind": "price_above", "threshold": 50})
    engine.set_rules(RuleSet((keep, added)))
    _feed(engine, state, [T0 + MIN], [102])
    assert [a.rule_id for a in engine.drain()] == ["k", "n"]


def test_seed_restores_cooldown_and_sequence() -> None:
    engine = AlertEngine(
        RuleSet(
            (parse_rule({"id": "k", "kind": "price_above", "threshold": 100, "cooldown": 600}),)
        ),
        bucket_s=60,
    )
    engine.seed("BTCUSDT", {"k": (T0, 4)})
    state = SymbolAnalytics("BTCUSDT", AnalyticsConfig(window=3))
    _feed(engine, state, [T0 + MIN], [101])
    assert engine.drain() == []
    _feed(engine, state, [T0 + 11 * MIN, T0 + 12 * MIN], [99, 101])
    assert [a.seq for a in engine.drain()] == [5]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"id": "r1", "kind": "pct_change", "window": "5m", "threshold": "lots"},
            "alert rule 'r1': field 'threshold': Input should be a valid number",
        ),
        (
            {"id": "r2", "kind": "price_jump", "threshold": 1},
            "alert rule 'r2': field 'kind': must be one of price_above",
        ),
        ({"id": "r3", "threshold": 1}, "alert rule 'r3': field 'kind': must be one of"),
        ({"id": "r4", "kind": "price_above"}, "alert rule 'r4': field 'threshold': Field required"),
        (
            {"id": "r5", "kind": "price_above", "threshold": 1, "colldown": 5},
            "alert rule 'r5': field 'colldown': Extra inputs are not permitted",
        ),
        (
            {"id": "r6", "kind": "price_above", "threshold": 1, "cooldown": "soon"},
            "alert rule 'r6': field 'cooldown': Value error, 'soon' is not a duration",
        ),
        (
            {"id": "r7", "kind": "drawdown_below", "threshold": 0.05},
            "alert rule 'r7': field 'threshold': Input should be less than 0",
        ),
        ({"id": "bad id!", "kind": "price_above", "threshold": 1}, "field 'id'"),
        (
            {"id": "r8", "kind": "price_above", "threshold": 1, "symbol": None},
            "alert rule 'r8': field 'symbol': Value error, must be a symbol or * for every symbol",
        ),
        (
            {"id": "r9", "kind": "price_above", "threshold": 1, "symbol": 7203},
            "quote a numeric ticker",
        ),
    ],
)
def test_bad_rule_names_rule_and_field(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        parse_rule(rule)
    assert message in info.value.message


def test_rule_file_errors_name_file_and_position() -> None:
    with pytest.raises(ConfigError, match=r"f.yml: alert rule #2 'b': field 'threshold'"):
        parse_rules(
            {
                "rules": [
                    {"id": "a", "kind": "price_above", "threshold": 1},
                    {"id": "b", "kind": "price_above"},
                ]
            },
            source="f.yml",
        )
    with pytest.raises(ConfigError, match="'a' is used twice"):
        parse_rules([{"id": "a", "kind": "price_above", "threshold": 1}] * 2, source="f.yml")
    with pytest.raises(ConfigError, match="expected a list"):
        parse_rules({"rules": {"id": "a"}}, source="f.yml")
    assert parse_rules({"rules": None}, source="f.yml") == []


def test_durations() -> None:
    assert parse_duration_s("90") == 90
    assert parse_duration_s("1.5m") == 90
    assert parse_duration_s(2) == 2
    assert parse_duration_s("1d") == 86400
    with pytest.raises(ValueError, match="negative"):
        parse_duration_s(-1)


def _write(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


def test_reload_picks_up_a_changed_file_and_keeps_old_rules_on_error(
    tmp_path: Path, duck: Store
) -> None:
    path = tmp_path / "alert_rules.yml"
    _write(path, "rules:\n  - {id: a, kind: price_above, threshold: 1}\n", 1)
    source = RuleSource(path, duck)
    assert [r.id for r in source.load().rules] == ["a"]
    assert source.poll() is None
    _write(path, "rules:\n  - {id: b, kind: price_below, threshold: 1}\n", 2)
    assert [r.id for r in source.poll().rules] == ["b"]  # type: ignore[union-attr]
    _write(path, "rules:\n  - {id: c, kind: price_below, threshold: x}\n", 3)
    assert source.poll() is None
    assert source.error is not None
    assert "alert rule #1 'c': field 'threshold'" in source.error
    assert [r.id for r in source.current.rules] == ["b"]
    with pytest.raises(ConfigError, match="field 'threshold'"):
        source.load()
    _write(path, "rules: [\n", 4)
    with pytest.raises(ConfigError, match="not valid YAML"):
        source.load()


def test_rules_added_through_the_store_are_reloaded(tmp_path: Path, duck: Store) -> None:
    path = tmp_path / "alert_rules.yml"
    path.write_text("rules:\n  - {id: file-rule, kind: price_above, threshold: 1}\n")
    source = RuleSource(path, duck)
    source.load()
    add_rule(
        duck, {"id": "api-rule", "kind": "volume_spike", "factor": 4, "symbol": "ethusdt"}, path
    )
    reloaded = source.poll()
    assert reloaded is not None
    assert [r.id for r in reloaded.rules] == ["file-rule", "api-rule"]
    listed = list_rules(path, duck)
    assert [(r["id"], r["source"]) for r in listed] == [("file-rule", "file"), ("api-rule", "api")]
    assert listed[1]["symbol"] == "ETHUSDT"
    with pytest.raises(ConflictError, match="exists already"):
        add_rule(duck, {"id": "file-rule", "kind": "price_above", "threshold": 2}, path)
    with pytest.raises(ConflictError):
        add_rule(duck, {"id": "api-rule", "kind": "price_above", "threshold": 2}, path)
    delete_rule(duck, "api-rule")
    with pytest.raises(NotFoundError, match="editing the file"):
        delete_rule(duck, "file-rule")
    assert [r.id for r in source.poll().rules] == ["file-rule"]  # type: ignore[union-attr]


def test_a_missing_rule_file_has_no_rules(tmp_path: Path) -> None:
    assert RuleSource(tmp_path / "none.yml").load().rules == ()


# -- message templates and thresholds are checked when a rule is made ------------------


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ("{Symbol} is high", "unknown field {Symbol}"),
        ("{value:999999999999}", "is not allowed"),
        ("{value:9999}", "is not allowed"),
        ("{value:.{rule}f}", "is not allowed"),
        ("{value.real}", "unknown field {value.real}"),
        ("{symbol[0]}", "unknown field {symbol[0]}"),
        ("{0}", "unknown field {0}"),
        ("{value:d}", "does not format"),
        ("unclosed {value", "not a valid template"),
        ("x" * 501, "at most 500 characters"),
    ],
)
def test_a_bad_message_template_is_refused_when_the_rule_is_made(
    message: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match="field 'message'") as caught:
        parse_rule({"id": "t", "kind": "price_above", "threshold": 1, "message": message})
    assert problem in caught.value.message


def test_good_templates_pass_and_format() -> None:
    message = "{symbol} at {price:,.2f}: {value:>10.4g} ({rule!r}) {{literal}}"
    alerts = _run(
        [{"id": "t", "kind": "price_above", "threshold": 100, "message": message}], [99, 101]
    )
    assert alerts[0].message == "BTCUSDT at 101.00:        101 ('t') {literal}"


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), float("-inf"), "1e400", "NaN"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(threshold: object) -> None:
    with pytest.raises(ConfigError, match="field 'threshold'"):
        parse_rule({"id": "t", "kind": "price_above", "threshold": threshold})


def test_a_bad_template_in_the_rule_file_names_the_rule(tmp_path: Path) -> None:
    from marketlake.stream.alerts import load_rule_file

    path = tmp_path / "alert_rules.yml"
    path.write_text(
        "rules:\n  - id: ok\n    kind: price_above\n    threshold: 1\n"
        "  - id: bad\n    kind: price_above\n    threshold: 1\n    message: '{Symbol}'\n"
    )
    with pytest.raises(ConfigError, match=r"alert rule #2 'bad': field 'message'.*\{Symbol\}"):
        load_rule_file(path)


def test_a_rule_that_fails_at_run_time_is_disabled_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from marketlake.stream.alerts import PriceAbove

    good = parse_rule({"id": "good", "kind": "price_above", "threshold": 100})
    # a stored definition from before templates were checked, bypassing validation
    bad = PriceAbove.model_construct(
        id="bad", kind="price_above", threshold=100, symbol="*", cooldown=0.0, message="{Symbol}"
    )
    engine = AlertEngine(RuleSet((bad, good)), bucket_s=60)
    state = SymbolAnalytics("BTCUSDT", AnalyticsConfig(window=5))
    with caplog.at_level("ERROR"):
        _feed(engine, state, T0 + np.arange(2) * MIN, [99, 101])
        _feed(engine, state, T0 + np.arange(2, 4) * MIN, [98, 102])
    assert [a.rule_id for a in engine.drain()] == ["good", "good"]
    assert engine.disabled == {"bad": "KeyError: 'Symbol'"}
    assert [r.message for r in caplog.records].count(
        "alert rule bad disabled until it is changed: KeyError: 'Symbol'"
    ) == 1
    # a changed definition is armed again
    fixed = parse_rule(
        {"id": "bad", "kind": "price_above", "threshold": 100, "message": "{symbol}"}
    )
    engine.set_rules(RuleSet((fixed, good)))
    assert engine.disabled == {}
