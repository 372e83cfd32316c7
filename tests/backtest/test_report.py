"""The HTML report: one self-contained file with statistics, charts and trades."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from marketlake.backtest import BacktestConfig, get_strategy, run
from marketlake.backtest import report as rep
from marketlake.backtest.stats import STAT_LABELS
from tests.backtest.helpers import goog


@pytest.fixture(scope="module")
def html() -> str:
    result = run(
        [goog()],
        get_strategy("sma_cross", {"fast": 5, "slow": 20}),
        BacktestConfig(allow_short=True, commission_bps=10),
    )
    return rep.render_html(result)


def test_the_report_needs_nothing_from_the_network(html: str) -> None:
    assert "http://" not in html
    assert "https://" not in html
    assert not re.search(r"<(script|link|img|iframe)\b", html)
    assert html.startswith("<!doctype html>")
    assert html.endswith("</html>")


def test_the_report_shows_every_statistic_and_the_three_charts(html: str) -> None:
    for label in STAT_LABELS.values():
        assert f"<span>{label.replace('&', '&amp;')}</span>" in html
    assert html.count("<svg ") == 3
    assert "<h2>Equity</h2>" in html
    assert "<h2>Drawdown (%)</h2>" in html
    assert "<h2>GOOG close with trades</h2>" in html


def test_the_price_chart_marks_long_and_short_entries_and_exits(html: str) -> None:
    longs = html.count("fill='#16a34a'")
    shorts = html.count("fill='#dc2626'/>")
    exits = html.count("<circle ")
    assert longs > 10
    assert shorts > 10
    assert exits == longs + shorts - 1  # the last trade is still open


def test_long_trade_lists_and_markers_are_cut_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rep, "MAX_TRADE_ROWS", 10)
    monkeypatch.setattr(rep, "MAX_MARKERS", 7)
    result = run([goog()], get_strategy("sma_cross", {"fast": 5, "slow": 20}), BacktestConfig())
    html = rep.render_html(result)
    trades = result.trades.num_rows
    assert html.count("<tr><td>GOOG</td>") == 10
    assert f"the first 10 of {trades} trades" in html
    assert html.count("fill='#16a34a'") == 7
    assert f"markers for the last 7 of {trades} trades" in html


def test_write_report_creates_the_file(tmp_path: Path) -> None:
    result = run([goog()], get_strategy("buy_and_hold"), BacktestConfig())
    path = rep.write_report(result, tmp_path / "sub" / "r.html")
    assert path.read_text(encoding="utf-8").count("<svg ") == 3


def test_decimation_keeps_each_buckets_extremes_and_the_last_point() -> None:
    values = np.sin(np.linspace(0, 40, 100_000)) + np.linspace(0, 1, 100_000)
    values[12_345] = -5.0
    keep = rep.decimate(values, 900)
    assert len(keep) <= 901
    assert 12_345 in keep
    assert values.argmax() in keep
    assert keep[-1] == 99_999
    assert np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(rep.decimate(values[:10], 900), np.arange(10))


def test_a_million_point_chart_stays_small() -> None:
    ts = np.arange(1_000_000, dtype=np.int64) * 60_000_000
    svg = rep.chart(ts, np.cumsum(np.ones(1_000_000)), color="#000", height=100)
    assert len(svg) < 120_000
