"""The store contract: one set of test bodies that every backend must pass.

Every test here talks to the store only through the public ``Store`` API and
runs once per backend of the parametrized ``store`` fixture (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketlake.errors import ConflictError, InputError, NotFoundError, SchemaError
from marketlake.schema import BAR_SCHEMA, Instrument, normalize_bars
from marketlake.store import Store, WriteResult

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def make_bars(
    symbol: str = "AAPL",
    minutes: Iterable[int] = range(5),
    *,
    timeframe: str = "1m",
    shift: float = 0.0,
    source: str = "test",
    trades: bool = True,
) -> pa.Table:
    """Consistent bars at T0 + minutes; ``shift`` moves every price (to make conflicts)."""
    mins = list(minutes)
    price = [100.0 + m + shift for m in mins]
    columns = {
        "ts": pa.array([at(m) for m in mins], pa.timestamp("us", tz="UTC")),
        "open": price,
        "high": [p + 1 for p in price],
        "low": [p - 1 for p in price],
        "close": [p + 0.5 for p in price],
        "volume": [1000.0 + m for m in mins],
    }
    if trades:
        columns["trades"] = pa.array([10 + m for m in mins], pa.int64())
        columns["vwap"] = [p + 0.25 for p in price]
    return normalize_bars(pa.table(columns), symbol=symbol, timeframe=timeframe, source=source)


def stored(store: Store, symbol: str = "AAPL", timeframe: str = "1m") -> list[dict[str, object]]:
    rows: list[dict[str, object]] = store.read_bars(symbol, timeframe).table.to_pylist()
    return rows


# -- idempotent writes ------------------------------------------------------------------


def test_write_into_empty_store_inserts_every_row(store: Store) -> None:
    assert store.write_bars(make_bars()) == WriteResult(inserted=5)
    assert stored(store) == make_bars().to_pylist()


def test_writing_the_same_bars_twice_inserts_nothing_new(store: Store) -> None:
    store.write_bars(make_bars())
    assert store.write_bars(make_bars()) == WriteResult(duplicates=5)
    assert stored(store) == make_bars().to_pylist()


def test_a_conflicting_bar_is_counted_and_left_as_stored(store: Store) -> None:
    store.write_bars(make_bars(minutes=range(3)))
    assert store.write_bars(make_bars(minutes=[1, 2], shift=5.0)) == WriteResult(conflicts=2)
    assert stored(store) == make_bars(minutes=range(3)).to_pylist()


def test_replace_overwrites_only_the_conflicting_bars(store: Store) -> None:
    store.write_bars(make_bars(minutes=range(3)))
    incoming = pa.concat_tables(
        [
            make_bars(minutes=[0]),
            make_bars(minutes=[1], shift=5.0, source="fix"),
            make_bars(minutes=[7]),
        ]
    )
    result = store.write_bars(incoming, on_conflict="replace")
    assert result == WriteResult(inserted=1, duplicates=1, replaced=1)
    expected = [
        *make_bars(minutes=[0]).to_pylist(),
        *make_bars(minutes=[1], shift=5.0, source="fix").to_pylist(),
        *make_bars(minutes=[2, 7]).to_pylist(),
    ]
    assert stored(store) == expected


def test_a_partly_known_batch_inserts_only_the_new_rows(store: Store) -> None:
    store.write_bars(make_bars(minutes=range(0, 10, 2)))
    result = store.write_bars(make_bars(minutes=range(10)))
    assert result == WriteResult(inserted=5, duplicates=5)
    assert stored(store) == make_bars(minutes=range(10)).to_pylist()


def test_repeats_inside_one_batch_keep_the_first_row(store: Store) -> None:
    batch = pa.concat_tables(
        [make_bars(minutes=[0, 1]), make_bars(minutes=[1]), make_bars(minutes=[0], shift=3.0)]
    )
    assert store.write_bars(batch) == WriteResult(inserted=2, duplicates=1, conflicts=1)
    assert stored(store) == make_bars(minutes=[0, 1]).to_pylist()


def test_an_unsorted_batch_reads_back_in_time_order(store: Store) -> None:
    store.write_bars(make_bars(minutes=[4, 0, 3, 1, 2]))
    assert stored(store) == make_bars(minutes=range(5)).to_pylist()


def test_a_batch_of_several_symbols_and_timeframes_is_kept_apart(store: Store) -> None:
    batch = pa.concat_tables(
        [
            make_bars("MSFT", [0, 1]),
            make_bars("AAPL", [0, 1]),
            make_bars("AAPL", [0], timeframe="5m"),
            make_bars("MSFT", [2]),
        ]
    )
    assert store.write_bars(batch) == WriteResult(inserted=6)
    assert stored(store, "MSFT") == make_bars("MSFT", [0, 1, 2]).to_pylist()
    assert stored(store, "AAPL", "5m") == make_bars("AAPL", [0], timeframe="5m").to_pylist()
    assert store.write_bars(batch) == WriteResult(duplicates=6)


def test_null_trades_and_vwap_round_trip_and_count_as_duplicates(store: Store) -> None:
    bars = make_bars(trades=False)
    store.write_bars(bars)
    assert stored(store) == bars.to_pylist()
    assert stored(store)[0]["trades"] is None
    assert store.write_bars(bars) == WriteResult(duplicates=5)


def test_a_bar_gaining_a_vwap_is_a_conflict(store: Store) -> None:
    store.write_bars(make_bars(trades=False))
    assert store.write_bars(make_bars()) == WriteResult(conflicts=5)


def test_the_source_alone_does_not_make_a_conflict(store: Store) -> None:
    store.write_bars(make_bars(source="yahoo"))
    assert store.write_bars(make_bars(source="alpaca")) == WriteResult(duplicates=5)
    assert {row["source"] for row in stored(store)} == {"yahoo"}


def test_an_empty_table_writes_nothing(store: Store) -> None:
    assert store.write_bars(BAR_SCHEMA.empty_table()) == WriteResult()
    assert store.count_bars() == 0


def test_a_table_in_another_column_order_is_normalized(store: Store) -> None:
    bars = make_bars()
    shuffled = bars.select(list(reversed(bars.column_names))).drop_columns(["trades", "vwap"])
    assert store.write_bars(shuffled).inserted == 5
    assert [row["close"] for row in stored(store)] == bars.column("close").to_pylist()


def test_a_lower_case_symbol_in_a_canonical_table_is_refused(store: Store) -> None:
    bars = make_bars()
    bars = bars.set_column(0, BAR_SCHEMA.field("symbol"), pa.array(["aapl"] * 5))
    with pytest.raises(SchemaError, match="not canonical"):
        store.write_bars(bars)
    assert store.count_bars() == 0


def test_an_unknown_conflict_policy_is_refused(store: Store) -> None:
    with pytest.raises(InputError, match="on_conflict"):
        store.write_bars(make_bars(), on_conflict="overwrite")  # type: ignore[arg-type]


def _write_then_fail(store: Store) -> None:
    with store.transaction():
        store.write_bars(make_bars())
        store.write_bars(make_bars("MSFT"))
        raise RuntimeError("abort")


def test_a_rolled_back_transaction_leaves_no_bars(store: Store) -> None:
    with pytest.raises(RuntimeError, match="abort"):
        _write_then_fail(store)
    assert store.count_bars() == 0
    assert store.write_bars(make_bars()) == WriteResult(inserted=5)
    assert stored(store) == make_bars().to_pylist()


def test_writes_inside_one_transaction_see_each_other(store: Store) -> None:
    with store.transaction():
        store.write_bars(make_bars(minutes=range(3)))
        assert store.write_bars(make_bars(minutes=range(5))) == WriteResult(
            inserted=2, duplicates=3
        )
    assert store.count_bars("AAPL", "1m") == 5


# -- reads --------------------------------------------------------------------------------


def test_read_ranges_are_half_open(store: Store) -> None:
    store.write_bars(make_bars(minutes=range(10)))
    table = store.read_bars("AAPL", "1m", start=at(2), end=at(5)).table
    assert table.column("ts").to_pylist() == [at(2), at(3), at(4)]


def test_read_accepts_iso_strings_and_naive_times_as_utc(store: Store) -> None:
    store.write_bars(make_bars(minutes=range(10)))
    table = store.read_bars(
        "aapl",
        "1m",
        start="2024-03-04T14:33:00Z",
        end=datetime(2024, 3, 4, 14, 35),  # noqa: DTZ001 - naive on purpose
    ).table
    assert table.column("ts").to_pylist() == [at(3), at(4)]


def test_read_returns_the_canonical_schema_ordered_by_symbol_then_time(store: Store) -> None:
    store.write_bars(pa.concat_tables([make_bars("MSFT", [3, 1]), make_bars("AAPL", [2, 0])]))
    table = store.read_bars(["MSFT", "AAPL"], "1m").table
    assert table.schema == BAR_SCHEMA
    assert [(r["symbol"], r["ts"]) for r in table.to_pylist()] == [
        ("AAPL", at(0)),
        ("AAPL", at(2)),
        ("MSFT", at(1)),
        ("MSFT", at(3)),
    ]


def test_reading_an_unknown_series_gives_an_empty_table(store: Store) -> None:
    store.write_bars(make_bars())
    page = store.read_bars("NOPE", "1m")
    assert page.table.num_rows == 0
    assert page.table.schema == BAR_SCHEMA
    assert page.next_cursor is None
    assert store.read_bars("AAPL", "1h").table.num_rows == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": at(5), "end": at(5)}, "must be before end"),
        ({"limit": 0}, "limit 0"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"start": "yesterday"}, "not an ISO date"),
    ],
)
def test_bad_read_arguments_are_input_errors(
    store: Store, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        store.read_bars("AAPL", "1m", **kwargs)  # type: ignore[arg-type]


def test_reading_no_symbols_is_an_input_error(store: Store) -> None:
    with pytest.raises(InputError, match="at least one symbol"):
        store.read_bars([], "1m")


@pytest.mark.parametrize("limit", [1, 3, 7, 25])
def test_keyset_pages_cover_every_bar_exactly_once(store: Store, limit: int) -> None:
    batch = pa.concat_tables(
        [make_bars("AAPL", range(9)), make_bars("MSFT", range(4, 12)), make_bars("ZZZ", [0])]
    )
    store.write_bars(batch)
    seen, cursor, pages = [], None, 0
    while True:
        page = store.read_bars(["ZZZ", "MSFT", "AAPL"], "1m", limit=limit, cursor=cursor)
        assert page.table.num_rows <= limit
        seen += [(r["symbol"], r["ts"]) for r in page.table.to_pylist()]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    expected = sorted((r["symbol"], r["ts"]) for r in batch.to_pylist())
    assert seen == expected
    assert pages == -(-len(expected) // limit)  # no empty trailing page


def test_keyset_pages_respect_the_range(store: Store) -> None:
    store.write_bars(make_bars(minutes=range(20)))
    first = store.read_bars("AAPL", "1m", start=at(5), end=at(12), limit=4)
    assert first.table.column("ts").to_pylist() == [at(5), at(6), at(7), at(8)]
    rest = store.read_bars("AAPL", "1m", start=at(5), end=at(12), limit=4, cursor=first.next_cursor)
    assert rest.table.column("ts").to_pylist() == [at(9), at(10), at(11)]
    assert rest.next_cursor is None


def test_iter_bars_streams_every_bar_in_batches(store: Store) -> None:
    store.write_bars(pa.concat_tables([make_bars("AAPL", range(7)), make_bars("MSFT", range(5))]))
    batches = list(store.iter_bars(["AAPL", "MSFT"], "1m", batch_rows=5))
    assert [b.num_rows for b in batches] == [5, 5, 2]
    assert (
        pa.concat_tables(batches).to_pylist()
        == store.read_bars(["AAPL", "MSFT"], "1m").table.to_pylist()
    )


def test_latest_bar_is_the_newest_one(store: Store) -> None:
    assert store.latest_bar("AAPL", "1m") is None
    store.write_bars(make_bars(minutes=[3, 9, 1]))
    latest = store.latest_bar("aapl", "1m")
    assert latest == make_bars(minutes=[9]).to_pylist()[0]


def test_coverage_gives_first_last_and_count(store: Store) -> None:
    store.write_bars(pa.concat_tables([make_bars(minutes=[3, 9, 1]), make_bars("MSFT", [0])]))
    cover = store.coverage("AAPL", "1m")
    assert (cover.symbol, cover.timeframe, cover.first, cover.last, cover.count) == (
        "AAPL",
        "1m",
        at(1),
        at(9),
        3,
    )
    empty = store.coverage("AAPL", "1d")
    assert (empty.first, empty.last, empty.count) == (None, None, 0)


def test_bar_summary_and_counts_per_series(store: Store) -> None:
    store.write_bars(
        pa.concat_tables(
            [
                make_bars(minutes=range(4)),
                make_bars("MSFT", [0]),
                make_bars(minutes=[0], timeframe="1h"),
            ]
        )
    )
    summary = [
        (r["symbol"], r["timeframe"], r["bars"], r["first"], r["last"]) for r in store.bar_summary()
    ]
    assert summary == [
        ("AAPL", "1h", 1, at(0), at(0)),
        ("AAPL", "1m", 4, at(0), at(3)),
        ("MSFT", "1m", 1, at(0), at(0)),
    ]
    assert store.count_bars() == 6
    assert store.count_bars("AAPL") == 5
    assert store.count_bars("AAPL", "1m") == 4


def test_delete_bars_of_one_timeframe_or_all(store: Store) -> None:
    store.write_bars(
        pa.concat_tables(
            [
                make_bars(minutes=range(4)),
                make_bars("MSFT", [0]),
                make_bars(minutes=[0], timeframe="1h"),
            ]
        )
    )
    assert store.delete_bars("AAPL", "1h") == 1
    assert store.delete_bars("AAPL", "1d") == 0
    assert store.count_bars("AAPL") == 4
    assert store.delete_bars("aapl") == 4
    assert store.count_bars() == 1
    assert store.write_bars(make_bars(minutes=range(2))) == WriteResult(inserted=2)


# -- a reference model of the write rules ------------------------------------------------


def _model_row(
    model: dict[tuple[str, int], float],
    seen: dict[tuple[str, int], float],
    key: tuple[str, int],
    shift: float,
    policy: str,
) -> WriteResult:
    """What writing the bar ``key`` (symbol, minute) with ``shift`` should count, given the
    stored ``model`` and the bars ``seen`` earlier in the batch; updates both."""
    if key in seen:
        same = seen[key] == shift
        return WriteResult(duplicates=int(same), conflicts=int(not same))
    seen[key] = shift
    old = model.get(key)
    if old is None or policy == "replace":
        model[key] = shift
    if old is None:
        return WriteResult(inserted=1)
    if old == shift:
        return WriteResult(duplicates=1)
    return WriteResult(replaced=1) if policy == "replace" else WriteResult(conflicts=1)


def _assert_stored_as_modelled(
    store: Store, model: dict[tuple[str, int], float], symbols: tuple[str, ...]
) -> None:
    """Each symbol's stored bars are exactly the model's (symbol, minute) → shift bars."""
    for symbol in symbols:
        want = [
            make_bars(symbol, [m], shift=s).to_pylist()[0]
            for (sym, m), s in sorted(model.items())
            if sym == symbol
        ]
        assert stored(store, symbol) == want


_writes = st.lists(
    st.tuples(
        st.sampled_from(["AAPL", "MSFT"]),
        st.lists(
            st.tuples(st.integers(0, 12), st.sampled_from([0.0, 1.0])), min_size=1, max_size=15
        ),
        st.sampled_from(["ignore", "replace"]),
    ),
    min_size=1,
    max_size=5,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(writes=_writes)
def test_writes_match_a_reference_model(
    store: Store, writes: list[tuple[str, list[tuple[int, float]], str]]
) -> None:
    """Any sequence of writes gives the counts and contents a dictionary model predicts."""
    store.delete_bars("AAPL")
    store.delete_bars("MSFT")
    model: dict[tuple[str, int], float] = {}
    for symbol, rows, policy in writes:
        expected, seen = WriteResult(), dict[tuple[str, int], float]()
        for minute, shift in rows:
            expected += _model_row(model, seen, (symbol, minute), shift, policy)
        batch = pa.concat_tables([make_bars(symbol, [m], shift=s) for m, s in rows])
        assert store.write_bars(batch, on_conflict=policy) == expected  # type: ignore[arg-type]
    _assert_stored_as_modelled(store, model, ("AAPL", "MSFT"))


_mixed_writes = st.lists(
    st.tuples(
        st.lists(
            st.tuples(
                st.sampled_from(["AAPL", "MSFT", "SPY"]),
                st.integers(0, 12),
                st.sampled_from([0.0, 1.0]),
            ),
            min_size=1,
            max_size=20,
        ),
        st.sampled_from(["ignore", "replace"]),
    ),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(writes=_mixed_writes)
def test_per_series_results_match_a_reference_model(
    store: Store, writes: list[tuple[list[tuple[str, int, float]], str]]
) -> None:
    """Batches mixing symbols give each series the counts a dictionary model predicts."""
    for symbol in ("AAPL", "MSFT", "SPY"):
        store.delete_bars(symbol)
    model: dict[tuple[str, int], float] = {}
    for rows, policy in writes:
        expected: dict[tuple[str, str], WriteResult] = {}
        seen: dict[tuple[str, int], float] = {}
        for symbol, minute, shift in rows:
            counted = _model_row(model, seen, (symbol, minute), shift, policy)
            expected[(symbol, "1m")] = expected.get((symbol, "1m"), WriteResult()) + counted
        batch = pa.concat_tables([make_bars(sym, [m], shift=s) for sym, m, s in rows])
        got = store.write_bars_per_series(batch, on_conflict=policy)  # type: ignore[arg-type]
        assert got == expected
    _assert_stored_as_modelled(store, model, ("AAPL", "MSFT", "SPY"))


def test_per_series_results_keep_timeframes_apart(store: Store) -> None:
    store.write_bars(make_bars("AAPL", range(2)))
    batch = pa.concat_tables(
        [make_bars("AAPL", range(3)), make_bars("AAPL", range(2), timeframe="1h")]
    )
    assert store.write_bars_per_series(batch) == {
        ("AAPL", "1m"): WriteResult(inserted=1, duplicates=2),
        ("AAPL", "1h"): WriteResult(inserted=2),
    }
    assert store.write_bars_per_series(make_bars("AAPL", [])) == {}


# -- trades -------------------------------------------------------------------------------


def _trades(ids: list[str]) -> pa.Table:
    return pa.table(
        {
            "symbol": ["BTCUSDT"] * len(ids),
            "ts": pa.array([at(i) for i in range(len(ids))], pa.timestamp("us", tz="UTC")),
            "price": [100.0 + i for i in range(len(ids))],
            "size": [0.5] * len(ids),
            "side": ["buy"] * len(ids),
            "trade_id": ids,
            "source": ["binance"] * len(ids),
        }
    )


def test_trades_are_written_once_per_trade_id(store: Store) -> None:
    assert store.write_trades(_trades(["a", "b", "b"])) == WriteResult(inserted=2, duplicates=1)
    assert store.write_trades(_trades(["a", "b", "c"])) == WriteResult(inserted=1, duplicates=2)
    assert store.read_trades("BTCUSDT").column("trade_id").to_pylist() == ["a", "b", "c"]
    assert store.read_trades("BTCUSDT", start=at(1), end=at(2), limit=5).num_rows == 1


# -- instruments --------------------------------------------------------------------------


def test_instruments_can_be_added_listed_updated_and_removed(store: Store) -> None:
    store.add_instrument(Instrument(symbol="msft", name="Microsoft"))
    store.add_instrument(Instrument(symbol="AAPL", name="Apple", exchange="XNAS"))
    assert [i.symbol for i in store.list_instruments()] == ["AAPL", "MSFT"]
    assert store.instrument("aapl").exchange == "XNAS"
    assert not bool(store.auto_registered(["AAPL"]))
    store.update_instrument(Instrument(symbol="AAPL", name="Apple Inc."))
    assert store.instrument("AAPL").name == "Apple Inc."
    store.delete_instrument("MSFT")
    assert store.instrument("MSFT", missing_ok=True) is None


def test_adding_a_known_symbol_is_a_conflict(store: Store) -> None:
    store.add_instrument(Instrument(symbol="AAPL"))
    with pytest.raises(ConflictError, match="exists already"):
        store.add_instrument(Instrument(symbol="AAPL"))


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.instrument("NOPE"),
        lambda s: s.delete_instrument("NOPE"),
        lambda s: s.update_instrument(Instrument(symbol="NOPE")),
    ],
)
def test_unknown_symbols_are_not_found(store: Store, call: object) -> None:
    with pytest.raises(NotFoundError, match="NOPE"):
        call(store)  # type: ignore[operator]


def test_symbols_seen_first_in_data_are_registered_with_defaults(store: Store) -> None:
    store.add_instrument(Instrument(symbol="AAPL"))
    assert store.ensure_instruments(["aapl", "BTCUSDT", "^GSPC", "BTCUSDT"]) == ["BTCUSDT", "^GSPC"]
    crypto = store.instrument("BTCUSDT")
    assert (crypto.asset_class, crypto.timezone) == ("crypto", "UTC")
    assert store.instrument("^GSPC").asset_class == "index"
    assert bool(store.auto_registered(["BTCUSDT"]))
    assert not bool(store.auto_registered(["AAPL"]))


def test_removing_an_instrument_with_data_removes_its_bars(store: Store) -> None:
    store.add_instrument(Instrument(symbol="AAPL"))
    store.add_instrument(Instrument(symbol="MSFT"))
    store.write_bars(pa.concat_tables([make_bars(), make_bars("MSFT")]))
    store.delete_instrument("MSFT")
    assert store.count_bars("MSFT") == 5
    store.delete_instrument("AAPL", with_data=True)
    assert store.count_bars("AAPL") == 0


# -- jobs and checkpoints ---------------------------------------------------------------


def test_a_job_records_its_life(store: Store) -> None:
    job = store.create_job("ingest", {"symbols": ["AAPL"]})
    assert store.get_job(job.id).status == "pending"
    store.update_job(job.id, status="running")
    running = store.get_job(job.id)
    assert running.started_at is not None
    assert running.finished_at is None
    store.update_job(job.id, status="failed", summary={"rows": 3}, error="boom")
    done = store.get_job(job.id)
    assert (done.status, done.summary, done.error, done.params) == (
        "failed",
        {"rows": 3},
        "boom",
        {"symbols": ["AAPL"]},
    )
    assert done.finished_at is not None
    assert done.started_at is not None
    assert done.finished_at >= done.started_at


def test_jobs_list_newest_first_filtered_by_kind(store: Store) -> None:
    ids = [store.create_job(kind, {}).id for kind in ("ingest", "import", "ingest")]
    assert [j.id for j in store.list_jobs()] == ids[::-1]
    assert [j.id for j in store.list_jobs(kind="ingest", limit=1)] == [ids[2]]


def test_unknown_jobs_are_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.get_job("nope")
    with pytest.raises(NotFoundError):
        store.update_job("nope", status="running")


def test_checkpoints_are_kept_per_provider_symbol_and_timeframe(store: Store) -> None:
    assert store.get_checkpoint("yahoo", "AAPL", "1d") is None
    store.set_checkpoint("yahoo", "aapl", "1d", at(0), job_id="j1")
    store.set_checkpoint("yahoo", "AAPL", "1d", at(5))
    store.set_checkpoint("alpaca", "AAPL", "1d", at(1))
    assert store.get_checkpoint("yahoo", "AAPL", "1d") == at(5)
    assert store.get_checkpoint("alpaca", "AAPL", "1d") == at(1)
    assert store.get_checkpoint("yahoo", "AAPL", "1m") is None


def test_checkpoints_of_several_symbols_are_set_at_once(store: Store) -> None:
    store.set_checkpoint("binance", "BTCUSDT", "1m", at(0), job_id="old")
    store.set_checkpoint("binance", "BTCUSDT", "1h", at(0))
    store.set_checkpoints("binance", "1m", {"btcusdt": at(7), "ETHUSDT": at(3)}, "j2")
    store.set_checkpoints("binance", "1m", {})
    assert store.get_checkpoint("binance", "BTCUSDT", "1m") == at(7)
    assert store.get_checkpoint("binance", "ETHUSDT", "1m") == at(3)
    assert store.get_checkpoint("binance", "BTCUSDT", "1h") == at(0)
    rows = store.select_rows(
        "checkpoints", {"provider": "binance", "timeframe": "1m"}, order_by="symbol"
    )
    assert [(r["symbol"], r["job_id"]) for r in rows] == [("BTCUSDT", "j2"), ("ETHUSDT", "j2")]


def test_the_schema_version_is_recorded(store: Store) -> None:
    from marketlake.store.tables import SCHEMA_VERSION

    assert store.schema_version() == SCHEMA_VERSION


# -- named operations (the only way code outside store/ reaches SQL) ----------------------


def test_series_operations_answer_from_the_stored_bars(store: Store) -> None:
    store.write_bars(make_bars(minutes=range(5)))
    store.write_bars(make_bars(minutes=[0, 60], timeframe="1h", source="other"))
    closes = store.newest_closes("aapl", "1m", 2)
    assert closes.column_names == ["ts", "close"]
    assert closes.column("ts").to_pylist() == [at(3), at(4)]
    assert store.latest_bar_times("AAPL") == {"1m": at(4), "1h": at(60)}
    assert store.stored_timeframes("AAPL") == ["1h", "1m"]
    assert store.stored_timeframes("MSFT") == []
    times = store.bar_times(["AAPL"], "1m", at(1), at(3))
    assert times.to_pylist() == [{"symbol": "AAPL", "ts": at(m)} for m in (1, 2)]
    assert store.bar_times([], "1m", at(0), at(3)).num_rows == 0
    assert store.close_before("AAPL", "1m", at(2)) == 101.5
    assert store.close_before("AAPL", "1m", at(0)) is None
    assert store.close_at("AAPL", "1m", at(2)) == 102.5
    assert store.close_at("AAPL", "1m", at(9)) is None
    assert store.main_source("AAPL", "1m") == "test"
    assert store.main_source("AAPL", "1d") is None
    store.ping()


def test_latest_trade_is_the_newest_one(store: Store) -> None:
    assert store.latest_trade("BTCUSDT") is None
    store.write_trades(_trades(["a", "b", "c"]))
    trade = store.latest_trade("btcusdt")
    assert trade is not None
    assert (trade["trade_id"], trade["ts"], trade["price"]) == ("c", at(2), 102.0)


def test_corporate_actions_are_written_once_and_replaced_on_request(store: Store) -> None:
    from marketlake.timeseries.adjust import ACTION_SCHEMA

    def actions(value: float) -> pa.Table:
        rows = [
            {"symbol": "AAPL", "ts": at(0), "kind": "split", "value": 4.0, "source": "t"},
            {"symbol": "AAPL", "ts": at(1), "kind": "dividend", "value": value, "source": "t"},
            {"symbol": "MSFT", "ts": at(0), "kind": "dividend", "value": 0.5, "source": "t"},
        ]
        return pa.Table.from_pylist(rows, schema=ACTION_SCHEMA)

    assert store.write_actions(actions(1.0)) == 3
    assert store.write_actions(actions(2.0)) == 0
    assert store.write_actions(actions(2.0), replace=True) == 1
    found = store.read_actions(["MSFT", "AAPL"])
    assert found.schema.equals(ACTION_SCHEMA)
    assert [(r["symbol"], r["kind"], r["value"]) for r in found.to_pylist()] == [
        ("AAPL", "split", 4.0),
        ("AAPL", "dividend", 2.0),
        ("MSFT", "dividend", 0.5),
    ]
    assert store.read_actions("aapl", kind="split").num_rows == 1
    assert store.read_actions("AAPL", start=at(1)).column("kind").to_pylist() == ["dividend"]
    assert store.read_actions("AAPL", end=at(1)).column("kind").to_pylist() == ["split"]
    assert store.read_actions([]).num_rows == 0


def test_alert_rules_api_keys_and_backtests_round_trip(store: Store) -> None:
    assert store.add_alert_rule("r1", '{"id": "r1"}')
    assert not store.add_alert_rule("r1", '{"id": "other"}')
    assert [(r["id"], r["definition"]) for r in store.alert_rules()] == [("r1", '{"id": "r1"}')]
    assert store.delete_alert_rule("r1")
    assert not store.delete_alert_rule("r1")

    store.add_api_key("k1", name="ci", key_hash="h1", scopes="read", created_at=at(0))
    store.add_api_key("k2", name="ops", key_hash="h2", scopes="admin", created_at=at(1))
    assert [k["id"] for k in store.api_keys()] == ["k1", "k2"]
    assert [k["id"] for k in store.api_keys(name="ops")] == ["k2"]
    assert store.api_keys(key_id="k1")[0]["hash"] == "h1"
    assert store.revoke_api_key("k1", at(2))
    assert not store.revoke_api_key("nope", at(2))
    assert store.api_keys(key_id="k1")[0]["revoked_at"] == at(2)

    store.add_backtest("b1", params="{}", stats="[]", trades=None, equity=None, created_at=at(0))
    store.add_backtest("b2", params="{}", stats="{}", trades="{}", equity="[]", created_at=at(1))
    assert [b["id"] for b in store.backtests(limit=5)] == ["b2", "b1"]
    row = store.backtest("b1")
    assert row is not None
    assert row["status"] == "succeeded"
    assert row["finished_at"] == at(0)
    assert store.backtest("nope") is None


def test_quality_reports_keep_their_findings(store: Store) -> None:
    def finding(rule: str, severity: str, symbol: str, minute: int) -> dict[str, object]:
        return {
            "report_id": "q1",
            "rule": rule,
            "severity": severity,
            "symbol": symbol,
            "timeframe": "1m",
            "ts": at(minute),
            "end_ts": None,
            "values": "{}",
            "message": "m",
        }

    findings = [finding("gap", "warning", "MSFT", 0), finding("ohlc", "error", "AAPL", 1)]
    store.add_quality_report("q1", job_id=None, scope="{}", summary="{}", findings=findings)
    assert [r["id"] for r in store.quality_reports()] == ["q1"]
    assert store.quality_report("q1") is not None
    assert store.quality_report("q2") is None
    assert [f["symbol"] for f in store.quality_findings("q1")] == ["AAPL", "MSFT"]
    assert [f["symbol"] for f in store.quality_findings("q1", order="time")] == ["MSFT", "AAPL"]
    assert [f["rule"] for f in store.quality_findings("q1", severity="error")] == ["ohlc"]
    counts = {(c["rule"], c["severity"]): c["n"] for c in store.finding_counts()}
    assert counts == {("gap", "warning"): 1, ("ohlc", "error"): 1}


def test_stored_metrics_and_alerts_read_empty_without_a_stream(store: Store) -> None:
    assert store.latest_metrics() == []
    assert store.latest_metrics("BTCUSDT") == []
    assert store.read_alerts(symbol="btcusdt", rule_id="r", start=at(0), end=at(1)) == []
    with pytest.raises(InputError):
        store.read_alerts(start=at(1), end=at(0))


def test_stream_metrics_keep_the_latest_value_and_alerts_are_stored_once(store: Store) -> None:
    store.write_metrics([])
    store.write_metrics([("BTCUSDT", "price", at(1), 100.0), ("BTCUSDT", "vwap", at(1), 99.5)])
    store.write_metrics([("BTCUSDT", "price", at(2), 101.0), ("ETHUSDT", "price", at(2), 3.0)])
    latest = {(m["symbol"], m["name"]): m["value"] for m in store.latest_metrics()}
    assert latest == {
        ("BTCUSDT", "price"): 101.0,
        ("BTCUSDT", "vwap"): 99.5,
        ("ETHUSDT", "price"): 3.0,
    }

    def alert(n: int, rule: str, minute: int) -> dict[str, object]:
        return {
            "id": f"a{n}", "rule_id": rule, "symbol": "BTCUSDT", "ts": at(minute),
            "kind": "price_above", "value": 100.0 + n, "message": f"alert {n}", "seq": n,
        }  # fmt: skip

    assert sorted(store.add_alerts([alert(1, "up", 1), alert(2, "up", 3)])) == ["a1", "a2"]
    # a replay stores nothing twice and reports only the new id
    assert store.add_alerts([alert(2, "up", 3), alert(3, "down", 2)]) == ["a3"]
    assert store.add_alerts([alert(n, "up", n) for n in range(1, 4)]) == []
    marks = {r["rule_id"]: (r["ts"], r["seq"]) for r in store.last_alert_per_rule("BTCUSDT")}
    assert marks == {"up": (at(3), 2), "down": (at(2), 3)}
    assert store.last_alert_per_rule("ETHUSDT") == []
    assert len(store.read_alerts(symbol="BTCUSDT")) == 3
