"""The Grafana expansion used by the panel tests gives the text Grafana itself gives.

Expected strings are the ones in Grafana's own tests of its PostgreSQL macros
(``macros_test.go``) and of SQL variable formatting.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.deploy.grafana_sql import PanelContext, interval_seconds, rfc3339

FROM = datetime(2018, 4, 12, 18, 0, tzinfo=UTC)
CTX = PanelContext(
    FROM,
    FROM + timedelta(minutes=5),
    interval="10m",
    variables={"symbol": "O'Neil", "symbols": ["AAPL", "BRK'B"]},
)


def test_time_filter_is_an_inclusive_between_in_rfc3339() -> None:
    assert CTX.expand("WHERE $__timeFilter(time_column)") == (
        "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
    )


def test_time_group_buckets_epoch_seconds() -> None:
    assert CTX.expand("SELECT $__timeGroup(time_column,'5m')") == (
        "SELECT floor(extract(epoch from time_column)/300)*300"
    )
    assert CTX.expand("$__timeGroupAlias(time_column , '5m')") == (
        'floor(extract(epoch from time_column)/300)*300 AS "time"'
    )


def test_time_group_followed_by_a_comma_gets_the_time_alias() -> None:
    assert CTX.expand("SELECT $__timeGroup(time_column,'5m'), value") == (
        'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", value'
    )


def test_interval_and_epoch_substitutions() -> None:
    assert CTX.expand("$__interval $__interval_ms $__unixEpochFrom() $__timeFrom()") == (
        f"10m 600000 {int(FROM.timestamp())} '2018-04-12T18:00:00Z'"
    )
    assert CTX.expand("$__timeGroupAlias(ts, $__interval)") == (
        'floor(extract(epoch from ts)/600)*600 AS "time"'
    )


def test_variables_are_quoted_as_grafana_quotes_them_for_sql() -> None:
    assert CTX.expand("'$symbol' ${symbol} [[symbol]]") == "'O''Neil' O''Neil O''Neil"
    assert CTX.expand("IN ($symbols)") == "IN ('AAPL','BRK''B')"
    assert CTX.expand("${symbols:csv} ${symbol:sqlstring}") == "AAPL,BRK'B 'O''Neil'"
    assert CTX.expand("$unknown") == "$unknown"


def test_fractional_seconds_and_bad_input() -> None:
    assert rfc3339(datetime(1960, 2, 1, 7, 0, 0, 500000, tzinfo=UTC)) == "1960-02-01T07:00:00.5Z"
    assert interval_seconds("100ms") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="error parsing interval"):
        interval_seconds("soon")
    with pytest.raises(ValueError, match="unknown macro"):
        CTX.expand("$__nope(x)")
