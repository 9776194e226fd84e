"""Valve wells, regulator boxes and relief stacks: records, relations, append-only maintenance, the overdue list,
area limits, the demo's seed, and a supply balance (供销差) checked by hand."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from meterhub import facilities
from meterhub.facilities import FacilityError
from meterhub.store import Store
from tests.meterhub.factories import make_meter

TODAY = date(2026, 3, 20)
COUNTS = "SELECT (SELECT count(*) FROM facility), (SELECT count(*) FROM facility_account)"


@pytest.fixture
def base(store: Store) -> dict[str, Any]:
    with store.transaction(actor="setup") as conn:
        conn.execute("SELECT meterhub_facility_defaults()")
        one = make_meter(conn, 1)
        two = make_meter(conn, 2)
        area = conn.execute("SELECT id FROM area WHERE code = 'A1'").fetchone()
        assert area is not None
    return {"one": one, "two": two, "area1": area[0]}


def _box(store: Store, code: str = "TYX-1", community: str = "C1", **extra: Any) -> str:
    values = {
        "code": code,
        "kind": "box",
        "name": "幸福小区 1 号调压箱",
        "community": community,
        "pressure_in_mpa": "0.4",
        "pressure_out_mpa": "0.0030",
        "install_date": "2024-05-01",
        **extra,
    }
    return facilities.create(store, "engineer", values, today=TODAY)


def test_create_link_attach_and_show_both_ways(store: Store, base: dict[str, Any]) -> None:
    _box(store, latitude="39.912345", longitude="116.401234", model="RTZ-31/0.4FQ", flow_m3h="300")
    facilities.create(
        store,
        "engineer",
        {"code": "FJ-1", "kind": "well", "name": "进站阀井", "community": "C1", "dn": "150"},
        today=TODAY,
    )
    facilities.create(store, "engineer", {"code": "FS-1", "kind": "stack", "name": "放散桩", "area": "A1"}, today=TODAY)
    facilities.link(store, "engineer", "FJ-1", "TYX-1")  # named in either order
    facilities.link(store, "engineer", "TYX-1", "FS-1")
    assert facilities.attach_accounts(store, "engineer", "TYX-1", ["AC1", "AC2"]) == ["AC1", "AC2"]
    with store.connection() as conn:
        box = facilities.get(conn, "TYX-1")
        well = facilities.get(conn, "FJ-1")
        assert facilities.box_of_account(conn, "AC2") == "TYX-1"
        history = conn.execute(
            "SELECT changed_by, table_name FROM change_history WHERE table_name LIKE 'facility%%' ORDER BY id"
        ).fetchall()
    assert [(x.code, x.kind) for x in box.links] == [("FJ-1", "well"), ("FS-1", "stack")]
    assert [a.account_no for a in box.accounts] == ["AC1", "AC2"]
    assert box.accounts[0].meters == ["M00000001"]
    assert [x.code for x in well.links] == ["TYX-1"]
    assert box.latitude == Decimal("39.912345") and box.pressure_out_mpa == Decimal("0.0030")
    assert box.area == "A1" and box.community == "C1" and box.threshold_pct == Decimal("5.00")
    assert {t for _, t in history} == {"facility", "facility_link", "facility_account"}
    assert {who for who, _ in history} == {"engineer"}


def test_refusals_write_nothing(store: Store, base: dict[str, Any]) -> None:
    _box(store)
    facilities.create(store, "e", {"code": "FJ-1", "kind": "well", "name": "阀井", "community": "C1"}, today=TODAY)
    facilities.attach_accounts(store, "e", "TYX-1", ["AC1"])
    cases = [
        (lambda: _box(store), "duplicate"),
        (lambda: _box(store, "TYX-2", pressure_in_mpa="0.001", pressure_out_mpa="0.01"), "pressure_order"),
        (lambda: _box(store, "TYX-2", community="C9"), "no_community"),
        (lambda: _box(store, "TYX-2", latitude="91"), "out_of_range"),
        (lambda: _box(store, "TYX-2", install_date="2026-04-01"), "future_date"),
        (
            lambda: facilities.create(
                store, "e", {"code": "FJ-2", "kind": "well", "name": "x", "meter_no": "M00000001"}, today=TODAY
            ),
            "box_only",
        ),
        (lambda: facilities.link(store, "e", "FJ-1", "FJ-1"), "bad_link"),
        (lambda: _box(store, "TYX-2", meter_no="NOPE"), "no_meter"),
        # AC2 is fed by nothing yet, AC1 by TYX-1: the whole request is refused
        (lambda: facilities.attach_accounts(store, "e", "TYX-9", ["AC2"]), "not_found"),
    ]
    _box(store, "TYX-3")
    with store.connection() as conn:
        before = conn.execute(COUNTS).fetchone()
    for call, code in cases:
        with pytest.raises(FacilityError) as refused:
            call()
        assert refused.value.code == code
    with pytest.raises(FacilityError) as refused:
        facilities.attach_accounts(store, "e", "TYX-3", ["AC2", "AC1"])
    assert refused.value.code == "already_fed" and refused.value.params["box"] == "TYX-1"
    with store.connection() as conn:
        after = conn.execute(COUNTS).fetchone()
    assert before == after


def test_edit_records_only_what_changed(store: Store, base: dict[str, Any]) -> None:
    _box(store)
    assert facilities.update(store, "supervisor", "TYX-1", {"name": "幸福小区 1 号调压箱"}, today=TODAY) == []
    changed = facilities.update(
        store,
        "supervisor",
        "TYX-1",
        {"community": "C2", "status": "out_of_service", "loss_threshold_pct": "3.5"},
        today=TODAY,
    )
    assert sorted(changed) == ["area", "community", "loss_threshold_pct", "status"]
    with store.connection() as conn:
        box = facilities.get(conn, "TYX-1")
        row = conn.execute(
            "SELECT old_values, new_values FROM change_history WHERE table_name = 'facility' AND op = 'update'"
        ).fetchone()
    assert box.community == "C2" and box.area == "A2" and box.threshold_pct == Decimal("3.50")
    assert row is not None and row[0]["status"] == "in_service" and row[1]["status"] == "out_of_service"


def test_maintenance_is_append_only_and_drives_the_overdue_list(store: Store, base: dict[str, Any]) -> None:
    _box(store)  # installed 2024-05-01, never maintained: due 180 days later
    _box(store, "TYX-2")
    facilities.create(store, "e", {"code": "FJ-1", "kind": "well", "name": "阀井", "community": "C1"}, today=TODAY)
    record = facilities.record_maintenance(
        store, "engineer", "TYX-2",
        {"done_on": "2026-01-10", "kind": "repair", "person": "赵磊", "findings": "切断阀漏气", "parts": "皮膜 1 片",
         "next_due": "2026-07-10"},
        today=TODAY,
    )  # fmt: skip
    with pytest.raises(FacilityError, match="next_due"):
        facilities.record_maintenance(
            store,
            "e",
            "TYX-2",
            {"done_on": "2026-01-10", "kind": "repair", "person": "x", "next_due": "2026-01-01"},
            today=TODAY,
        )
    with store.connection() as conn:
        due = facilities.overdue(conn, TODAY)
        records, more = facilities.maintenance(conn, "皮膜")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE facility_maintenance SET person = 'someone else' WHERE id = %s", [record])
    assert [(r.code, r.due_on, r.days_overdue) for r in due] == [
        ("TYX-1", date(2024, 10, 28), 508),  # 2024-05-01 + 180 days
        ("FJ-1", TODAY, 0),  # neither a record nor an install date: due now
    ]
    assert [r.id for r in records] == [record] and not more
    with store.connection() as conn:
        assert [r.code for r in facilities.overdue(conn, date(2026, 7, 10), kind="box")] == ["TYX-1", "TYX-2"]


def test_area_limits(store: Store, base: dict[str, Any]) -> None:
    _box(store)
    _box(store, "TYX-2", community="C2")
    limited = frozenset({base["area1"]})
    with store.connection() as conn:
        assert [r.code for r in facilities.search(conn, areas=limited).rows] == ["TYX-1"]
        with pytest.raises(FacilityError) as refused:
            facilities.get(conn, "TYX-2", areas=limited)
        assert refused.value.code == "area"
    with pytest.raises(FacilityError) as refused:
        facilities.attach_accounts(store, "e", "TYX-1", ["AC2"], areas=limited)  # AC2 lies in area A2
    assert refused.value.code == "area"
    with pytest.raises(FacilityError) as refused:
        facilities.create(store, "e", {"code": "FJ-9", "kind": "well", "name": "x"}, areas=limited, today=TODAY)
    assert refused.value.code == "area_required"


# -- the supply balance, checked by hand ----------------------------------------------------------------------------
def _at(zone: ZoneInfo, day: int, hour: int, month: int = 3) -> datetime:
    return datetime.combine(date(2026, month, day), time(hour), tzinfo=zone)


def test_supply_balance_by_hand(store: Store, base: dict[str, Any]) -> None:
    """Box meter BOX-1 feeds AC1 and AC2 over 1-5 March 2026 (readings at 23:00 local).

    AC2's meter M00000002 has a 999.999 register and rolls over on 2 March. AC1's meter M00000001 is replaced on
    2 March at 10:00 (final register 106.000) by M-NEW (first register 0.000); the old meter's bench reading after
    that is not AC1's gas, and M-NEW's own reading at 10:00 gives way to the settlement reading.

    box BOX-1: 28 Feb 5000.000 | 1 Mar 5012.000 | 2 Mar 5023.000 | 3 Mar — | 4 Mar 5050.000 | 5 Mar 5060.000
    AC2 M..02: 990.000 | 995.500 | 2.000 (rollover) | 8.000 | 14.000 | 19.000
    AC1 M..01: 100.000 | 105.000 | final 106.000 at 10:00
    AC1 M-NEW:                    | first 0.000 at 10:00, 3.000 | 6.500 | 9.000 | 12.000

    1 Mar: box 12.000; fed 5.500 + 5.000 = 10.500; loss 1.500; 1.5 / 12 = 12.50 % > 5 → flagged
    2 Mar: box 11.000; fed (2.000 + 1000.000 - 995.500 = 6.500) + (106 - 105 = 1.000) + (3.000 - 0 = 3.000)
           = 10.500; loss 0.500; 0.5 / 11 = 4.545… → 4.55 % ≤ 5 → not flagged
    3 Mar: box has no reading → incomplete (box missing); fed 6.000 + 3.500 = 9.500 still shown
    4 Mar: box 5050 - 5023 covers 3 and 4 March → incomplete (box catch-up), not a loss
    5 Mar: box 10.000; fed 5.000 + 3.000 = 8.000; loss 2.000; 2 / 10 = 20.00 % → flagged
    March (complete days 1, 2, 5): box 33.000, fed 29.000, loss 4.000, 4 / 33 = 12.12 % → flagged; 3 of 5 days
    """
    zone = ZoneInfo(store.settings.timezone)
    one, two = base["one"], base["two"]
    with store.transaction(actor="setup") as conn:
        box_meter = conn.execute(
            "INSERT INTO meter (meter_no, driver_key, status) VALUES ('BOX-1', 'modbus', 'installed') RETURNING id"
        ).fetchone()
        new_meter = conn.execute(
            """INSERT INTO meter (meter_no, driver_key, status, account_id) VALUES ('M-NEW', 'native_json', 'installed',
                                                                                   %s) RETURNING id""",
            [one["account"]],
        ).fetchone()
        assert box_meter and new_meter
        conn.execute("UPDATE meter SET register_max = 999.999 WHERE id = %s", [two["meter"]])
        conn.execute("UPDATE meter SET account_id = NULL, status = 'removed' WHERE id = %s", [one["meter"]])
        conn.execute(
            """INSERT INTO meter_assignment (account_id, meter_id, valid_from, valid_to, first_value, final_value)
               VALUES (%s, %s, %s, %s, 0, 106.000), (%s, %s, %s, NULL, 0.000, NULL)""",
            [
                one["account"],
                one["meter"],
                _at(zone, 1, 0, month=2),
                _at(zone, 2, 10),
                one["account"],
                new_meter[0],
                _at(zone, 2, 10),
            ],
        )
        series = {
            box_meter[0]: [(_at(zone, 28, 23, 2), "5000.000"), (_at(zone, 1, 23), "5012.000"),
                           (_at(zone, 2, 23), "5023.000"), (_at(zone, 4, 23), "5050.000"),
                           (_at(zone, 5, 23), "5060.000")],
            two["meter"]: [(_at(zone, 28, 23, 2), "990.000"), (_at(zone, 1, 23), "995.500"),
                           (_at(zone, 2, 23), "2.000"), (_at(zone, 3, 23), "8.000"), (_at(zone, 4, 23), "14.000"),
                           (_at(zone, 5, 23), "19.000")],
            one["meter"]: [(_at(zone, 28, 23, 2), "100.000"), (_at(zone, 1, 23), "105.000"),
                           (_at(zone, 2, 11), "106.200")],  # on the bench after the replacement
            new_meter[0]: [(_at(zone, 2, 10), "0.100"), (_at(zone, 2, 23), "3.000"), (_at(zone, 3, 23), "6.500"),
                           (_at(zone, 4, 23), "9.000"), (_at(zone, 5, 23), "12.000")],
        }  # fmt: skip
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO reading (meter_id, channel, ts, value) VALUES (%s, 'volume_m3', %s, %s)",
                [(m, ts, Decimal(v)) for m, points in series.items() for ts, v in points],
            )
    _box(store, "TYX-1", meter_no="BOX-1")
    facilities.attach_accounts(store, "e", "TYX-1", ["AC1", "AC2"])
    with store.connection() as conn:
        result = facilities.balance(conn, "TYX-1", date(2026, 3, 1), date(2026, 3, 5), timezone=str(zone))
    days = {d.day.day: d for d in result.days}
    assert (days[1].box_m3, days[1].fed_m3, days[1].loss_m3, days[1].loss_pct, days[1].flagged) == (
        Decimal("12.000"),
        Decimal("10.500"),
        Decimal("1.500"),
        Decimal("12.50"),
        True,
    )
    assert (days[2].box_m3, days[2].fed_m3, days[2].loss_m3, days[2].loss_pct, days[2].flagged) == (
        Decimal("11.000"),
        Decimal("10.500"),
        Decimal("0.500"),
        Decimal("4.55"),
        False,
    )
    assert days[2].meters == 3  # the old meter until 10:00, the new one after, and AC2's
    assert not days[3].complete and days[3].box_m3 is None and days[3].fed_m3 == Decimal("9.500")
    assert days[3].loss_m3 is None and not days[3].flagged
    assert [(g.meter_no, g.side, g.status) for g in days[3].gaps] == [("BOX-1", "box", "missing")]
    assert [(g.meter_no, g.status) for g in days[4].gaps] == [("BOX-1", "catch_up")] and not days[4].flagged
    assert (days[5].loss_m3, days[5].loss_pct, days[5].flagged) == (Decimal("2.000"), Decimal("20.00"), True)
    [march] = result.months
    assert (march.box_m3, march.fed_m3, march.loss_m3, march.loss_pct) == (
        Decimal("33.000"),
        Decimal("29.000"),
        Decimal("4.000"),
        Decimal("12.12"),
    )
    assert (march.complete, march.complete_days, march.days, march.flagged, march.flagged_days) == (
        False,
        3,
        5,
        True,
        2,
    )
    # the box's own threshold wins over the default
    facilities.update(store, "e", "TYX-1", {"loss_threshold_pct": "15"}, today=TODAY)
    with store.connection() as conn:
        again = facilities.balance(conn, "TYX-1", date(2026, 3, 1), date(2026, 3, 5), timezone=str(zone))
    assert [d.day.day for d in again.days if d.flagged] == [5]


def test_a_box_without_meter_or_accounts_is_incomplete(store: Store, base: dict[str, Any]) -> None:
    _box(store)
    with store.connection() as conn:
        result = facilities.balance(conn, "TYX-1", date(2026, 3, 1), date(2026, 3, 2), timezone="Asia/Shanghai")
    assert [(d.complete, [g.status for g in d.gaps]) for d in result.days] == [(False, ["no_meter", "no_meter"])] * 2
    assert result.months[0].loss_pct is None


def test_seed_demo_twice_adds_nothing_the_second_time(store: Store) -> None:
    """On the demo's own master data and 40 days of its daily readings (40 MQTT meters and the fixed Modbus and
    serial ones): two boxes with their wells, stacks, fed accounts and records; the second call adds nothing; the
    box meter's readings give complete days with 2-4 % lost."""
    from meterhub import demo_data

    zone = ZoneInfo(store.settings.timezone)
    today = datetime.now(zone).date()
    with store.transaction(actor="demo") as conn:
        demo_data.seed_staff(conn)
        demo_data.seed_master_data(conn, 40)
        conn.execute("SELECT meterhub_facility_defaults()")
    demo_data.seed_history(store, today, today - timedelta(days=40))
    counts = []
    for _ in range(2):
        with store.transaction(actor="demo") as conn:
            facilities.seed_demo(conn)
        with store.connection() as conn:
            counts.append(conn.execute(
                """SELECT (SELECT count(*) FROM facility), (SELECT count(*) FROM facility_link),
                          (SELECT count(*) FROM facility_account), (SELECT count(*) FROM facility_maintenance),
                          (SELECT count(*) FROM reading), (SELECT count(*) FROM meter)"""
            ).fetchone())  # fmt: skip
    assert counts[0] == counts[1]
    assert counts[0][:2] == (6, 4) and counts[0][2] > 2 and counts[0][3] == 6
    with store.connection() as conn:
        box = facilities.get(conn, "TYX-001")
        result = facilities.balance(
            conn, "TYX-001", today - timedelta(days=30), today - timedelta(days=2), timezone=str(zone)
        )
        due = [r.code for r in facilities.overdue(conn, today)]
    assert box.meter_no == "TYX-M001" and [x.kind for x in box.links] == ["well", "stack"]
    assert "TYX-001" in due  # its last record named a due date 20 days ago
    complete = [d for d in result.days if d.complete]
    assert len(complete) >= 20
    usual = [d.loss_pct for d in complete if d.day.day not in (11, 12, 13) and d.loss_pct is not None]
    assert usual and all(Decimal("0") < pct < Decimal("6") for pct in usual), usual
