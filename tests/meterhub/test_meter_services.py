"""meterhub.meters: install, replace, suspend, resume and remove keep meters, assignments and the record in
step, refuse what does not fit and then change nothing; daily use and the register series for charts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from billing.reading_books import replace_meter_in
from billing.reading_store import ensure_period, load_assignments
from meterhub import meters
from meterhub.meters import MeterError
from meterhub.store import Store
from tests.meterhub.factories import make_meter


@pytest.fixture
def ids(store: Store) -> dict[str, Any]:
    """M00000001 installed on AC1 (area A1) since 2024-01-01 with register 5; AC9 in A1 without a meter;
    AC2 in area A2; S1 and S2 in stock."""
    with store.transaction() as conn:
        one, two = make_meter(conn, 1), make_meter(conn, 2)
        conn.execute("UPDATE meter SET install_date = '2024-01-01', initial_reading = 5")
        conn.execute(
            """INSERT INTO account (account_no, customer_id, community_id, usage_type_id)
               SELECT 'AC9', customer_id, community_id, usage_type_id FROM account WHERE id = %s""",
            [one["account"]],
        )
        conn.execute("INSERT INTO meter (meter_no, driver_key) VALUES ('S1', 'cjt188'), ('S2', 'cjt188')")
        areas = dict(conn.execute("SELECT code, id FROM area").fetchall())
    return {"one": one, "two": two, "A1": areas["A1"], "A2": areas["A2"]}


def _zone(store: Store) -> ZoneInfo:
    return ZoneInfo(store.settings.timezone)


def _snapshot(store: Store) -> tuple[Any, ...]:
    with store.connection() as conn:
        return (
            conn.execute(
                "SELECT meter_no, status, account_id, install_date, remove_date FROM meter ORDER BY 1"
            ).fetchall(),
            conn.execute("SELECT * FROM meter_assignment ORDER BY id").fetchall(),
            conn.execute("SELECT count(*) FROM meter_action").fetchone(),
            conn.execute("SELECT count(*) FROM change_history").fetchone(),
        )


def _replace(store: Store, old: str, new: str, at: datetime, final: str, first: str, **kw: Any) -> None:
    with store.transaction(actor="fitter") as conn:
        plan = meters.check_replacement(conn, store.settings.timezone, old, new, at, final, first, **kw)
        replace_meter_in(
            conn,
            store.settings.timezone,
            plan.account_id,
            plan.old_meter_no,
            plan.new_meter_no,
            plan.at,
            old_final_value=plan.old_final_value,
            new_first_value=plan.new_first_value,
        )
        meters.record_replacement(conn, plan, "broken display")


def test_install_replace_and_remove_give_billing_the_assignments(store: Store, ids: Any) -> None:
    zone = _zone(store)
    meters.install(store, "S1", "AC9", date(2024, 3, 5), "10.5", actor="fitter", note="new building")
    at = datetime(2024, 3, 20, 7, 30, tzinfo=zone)  # before 08:00 local: the previous day in UTC
    with store.transaction(actor="storekeeper") as conn:  # a usage type of its own, for the new meter too
        conn.execute("UPDATE meter SET usage_type_id = (SELECT id FROM usage_type) WHERE meter_no = 'S1'")
    _replace(store, "S1", "S2", at, "31.25", "0.5")
    with store.connection() as conn:
        period = ensure_period(conn, "2024-03", store.settings.timezone)
        frame = load_assignments(conn, period, store.settings.timezone).sort("valid_from")
        status = dict(conn.execute("SELECT meter_no, status FROM meter WHERE meter_no LIKE 'S%'").fetchall())
        dates = conn.execute("SELECT install_date, remove_date FROM meter WHERE meter_no = 'S1'").fetchone()
        new_install = conn.execute(
            "SELECT install_date, usage_type_id = (SELECT id FROM usage_type) FROM meter WHERE meter_no = 'S2'"
        ).fetchone()
    rows = [r for r in frame.to_dicts() if r["account_id"] == 3]
    assert [(r["first_value"], r["final_value"], r["explicit"]) for r in rows] == [
        (Decimal("10.500"), Decimal("31.250"), True),
        (Decimal("0.500"), None, True),
    ]
    assert rows[0]["valid_to"] == rows[1]["valid_from"] is not None
    assert status == {"S1": "removed", "S2": "installed"}
    assert dates == (date(2024, 3, 5), date(2024, 3, 20))  # local days
    assert new_install == (date(2024, 3, 20), True)

    meters.remove(store, "S2", datetime(2024, 3, 28, 16, tzinfo=zone), "4.000", "account closed", actor="fitter")
    with store.connection() as conn:
        assignment = conn.execute(
            """SELECT valid_to, final_value FROM meter_assignment x JOIN meter m ON m.id = x.meter_id
                WHERE m.meter_no = 'S2'"""
        ).fetchone()
        record = conn.execute(
            """SELECT m.meter_no, x.action, x.reading, o.meter_no, x.done_by FROM meter_action x
                 JOIN meter m ON m.id = x.meter_id LEFT JOIN meter o ON o.id = x.other_meter_id ORDER BY x.id"""
        ).fetchall()
        who = conn.execute(
            """SELECT DISTINCT h.changed_by FROM change_history h JOIN meter m ON m.id = h.row_id
                WHERE h.table_name = 'meter' AND h.op = 'update' AND m.meter_no IN ('S1', 'S2')"""
        ).fetchall()
    assert assignment == (datetime(2024, 3, 28, 16, tzinfo=zone), Decimal("4.000"))
    assert record == [
        ("S1", "install", Decimal("10.500"), None, "fitter"),
        ("S1", "replace_out", Decimal("31.250"), "S2", "fitter"),
        ("S2", "replace_in", Decimal("0.500"), "S1", "fitter"),
        ("S2", "remove", Decimal("4.000"), None, "fitter"),
    ]
    assert sorted(who) == [("fitter",), ("storekeeper",)]


def test_removing_a_meter_installed_without_a_recorded_assignment(store: Store, ids: Any) -> None:
    zone = _zone(store)
    at = datetime(2024, 2, 10, 9, tzinfo=zone)
    meters.remove(store, "M00000001", at, "77.7", "demolition", actor="fitter")
    with store.connection() as conn:
        row = conn.execute(
            "SELECT account_id, valid_from, valid_to, first_value, final_value FROM meter_assignment"
        ).fetchone()
        meter = conn.execute(
            "SELECT status, account_id, remove_date FROM meter WHERE meter_no = 'M00000001'"
        ).fetchone()
    assert row == (ids["one"]["account"], datetime(2024, 1, 1, tzinfo=zone), at, Decimal("5.000"), Decimal("77.700"))
    assert meter == ("removed", ids["one"]["account"], date(2024, 2, 10))


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda s: meters.install(s, "M00000001", "AC9", date(2024, 3, 1), "0", actor="x"), "not_in_stock"),
        (lambda s: meters.install(s, "S1", "NOPE", date(2024, 3, 1), "0", actor="x"), "no_account"),
        (lambda s: meters.install(s, "S1", "AC9", date(2024, 3, 1), "-1", actor="x"), "invalid_reading"),
        (lambda s: meters.install(s, "S1", "AC9", date(2024, 3, 1), "1.0005", actor="x"), "invalid_reading"),
        (lambda s: meters.install(s, "S1", "AC9", date.today() + timedelta(days=2), "0", actor="x"), "future"),
        (lambda s: meters.install(s, "S1", "AC2", date(2024, 3, 1), "0", actor="x", areas=frozenset({1})), "area"),
        (lambda s: meters.suspend(s, "S1", date(2024, 3, 1), "away", actor="x"), "not_installed"),
        (lambda s: meters.suspend(s, "M00000001", date(2024, 3, 1), " ", actor="x"), "reason_required"),
        (lambda s: meters.suspend(s, "M00000001", date(2023, 12, 1), "away", actor="x"), "before_install"),
        (lambda s: meters.resume(s, "M00000001", date(2024, 3, 1), "back", actor="x"), "not_suspended"),
        (lambda s: meters.suspend(s, "M00000002", date(2024, 3, 1), "x", actor="x", areas=frozenset({1})), "area"),
        (lambda s: meters.remove(s, "NOPE", datetime(2024, 3, 1, tzinfo=UTC), "1", "x", actor="x"), "no_meter"),
        (
            lambda s: meters.remove(
                s, "M00000001", datetime(2024, 1, 1, tzinfo=ZoneInfo(s.settings.timezone)), "1", "x", actor="x"
            ),
            "before_install",
        ),
        (lambda s: meters.remove(s, "S1", datetime(2024, 3, 1, tzinfo=UTC), "1", "x", actor="x"), "not_installed"),
        (lambda s: _replace(s, "M00000001", "M00000002", datetime(2024, 3, 1, tzinfo=UTC), "1", "0"), "not_in_stock"),
        (lambda s: _replace(s, "M00000001", "M00000001", datetime(2024, 3, 1, tzinfo=UTC), "1", "0"), "same_meter"),
        (lambda s: _replace(s, "S1", "S2", datetime(2024, 3, 1, tzinfo=UTC), "1", "0"), "not_installed"),
        (lambda s: _replace(s, "M00000001", "S1", datetime(2023, 3, 1, tzinfo=UTC), "1", "0"), "before_install"),
        (
            lambda s: _replace(s, "M00000002", "S1", datetime(2024, 3, 1, tzinfo=UTC), "1", "0", areas=frozenset({1})),
            "area",
        ),
    ],
)
def test_refusals_change_nothing(store: Store, ids: Any, call: Any, code: str) -> None:
    before = _snapshot(store)
    with pytest.raises(MeterError) as refused:
        call(store)
    assert refused.value.code == code
    assert _snapshot(store) == before


def test_resume_not_before_the_suspension(store: Store, ids: Any) -> None:
    meters.suspend(store, "M00000001", date(2024, 4, 10), "away for the summer", actor="clerk")
    with pytest.raises(MeterError) as refused:
        meters.resume(store, "M00000001", date(2024, 4, 9), "back early", actor="clerk")
    assert refused.value.code == "before_suspend" and refused.value.params == {"day": "2024-04-10"}
    meters.resume(store, "M00000001", date(2024, 9, 1), "back", actor="clerk")
    with store.connection() as conn:
        status = conn.execute("SELECT status FROM meter WHERE meter_no = 'M00000001'").fetchone()
        assert meters.get(conn, "M00000001") is not None
        actions = [(a.action, a.reason) for a in meters.actions(conn, ids["one"]["meter"])]
    assert status == ("installed",)
    assert actions == [("resume", "back"), ("suspend", "away for the summer")]


def test_an_area_limited_person_installs_in_their_area(store: Store, ids: Any) -> None:
    meters.install(store, "S1", "AC9", date(2024, 3, 1), "0", actor="fitter", areas=frozenset({ids["A1"]}))
    with store.connection() as conn:
        rows = meters.search(conn, areas=frozenset({ids["A1"]}))
        everything = meters.search(conn, q="s")
    assert [r.meter_no for r in rows] == ["M00000001", "S1"]
    assert [r.meter_no for r in everything] == ["S1", "S2"]


def _insert(store: Store, meter_id: int, rows: list[tuple[datetime, Decimal]]) -> None:
    with store.transaction() as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO reading (meter_id, channel, ts, value) VALUES (%s, 'volume_m3', %s, %s)",
            [(meter_id, ts, value) for ts, value in rows],
        )


def test_daily_use_counts_like_the_daily_consumption_view(store: Store, ids: Any) -> None:
    zone = _zone(store)
    meter_id = ids["one"]["meter"]
    start = datetime(2024, 5, 1, tzinfo=zone)
    rows = []
    value = Decimal("100.000")
    for hour in range(0, 24 * 12, 5):  # every 5 hours for 12 days, crossing local midnights unevenly
        value += Decimal(hour % 7) / 8
        rows.append((start + timedelta(hours=hour, minutes=17), value))
    _insert(store, meter_id, rows)
    store.maintain()
    with store.connection() as conn:
        view = conn.execute(
            "SELECT day, consumption_m3, register_m3, readings FROM daily_consumption WHERE meter_id = %s ORDER BY day",
            [meter_id],
        ).fetchall()
        full = meters.daily_use(conn, meter_id, date(2024, 5, 1), date(2024, 5, 12), store.settings.timezone)
        window = meters.daily_use(conn, meter_id, date(2024, 5, 4), date(2024, 5, 6), store.settings.timezone)
    assert [(d.day, d.consumption_m3, d.register_m3, d.readings) for d in full] == [tuple(v) for v in view]
    assert [(d.day, d.consumption_m3) for d in window] == [(v[0], v[1]) for v in view[3:6]]


def test_register_series_thins_out_long_histories(store: Store, ids: Any) -> None:
    meter_id = ids["one"]["meter"]
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [(start + timedelta(minutes=15 * i), Decimal(i) / 1000) for i in range(4 * 24 * 30)]
    _insert(store, meter_id, rows)
    end = start + timedelta(days=30)
    with store.connection() as conn:
        everything = meters.register_series(conn, meter_id, start, end, max_points=5000)
        thinned = meters.register_series(conn, meter_id, start, end, max_points=300)
    assert everything == rows
    assert len(thinned) <= 300 and thinned[-1] == rows[-1]
    assert all(point in rows for point in thinned)
    assert [t for t, _ in thinned] == sorted(t for t, _ in thinned)


def test_parse_reading() -> None:
    assert meters.parse_reading("12.340") == Decimal("12.340")
    assert meters.parse_reading(Decimal("0")) == Decimal("0")
    for bad in ("abc", "-0.001", "1.2345", "NaN", "Infinity", "1e20"):
        with pytest.raises(MeterError):
            meters.parse_reading(bad)


def test_the_meter_facts(store: Store, ids: Any) -> None:
    with store.transaction() as conn:
        conn.execute(
            """INSERT INTO meter_state (meter_id, last_seen_at, last_volume_m3, valve_reported, battery_v, rssi_dbm)
               VALUES (%s, '2024-05-01T08:00:00Z', 123.456, 'open', 3.6, -80)""",
            [ids["one"]["meter"]],
        )
    with store.connection() as conn:
        facts = meters.get(conn, "M00000001")
        stock = meters.get(conn, "S1")
    assert facts is not None and stock is not None
    assert (facts.account_no, facts.area_id, facts.usage_type, facts.last_volume_m3, facts.rssi_dbm) == (
        "AC1",
        ids["A1"],
        "居民",
        Decimal("123.456"),
        -80,
    )
    assert (stock.account_no, stock.area_id, stock.last_seen_at) == (None, None, None)
