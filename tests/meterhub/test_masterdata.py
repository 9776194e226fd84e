"""Master data services: reference rows with their change history and deactivation, the area tree, models
and their drivers, price periods checked by billing.tariff, installation dispatch (completed by installing
the meter through meterhub.meters), payment groups, and the demo's records."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from billing.tariff import Tariff
from drivers import registry
from meterhub import masterdata, meters
from meterhub.masterdata import MasterError
from meterhub.store import Store
from tests.meterhub.factories import make_meter


def validate(usage_type: str, definition: Any) -> None:
    Tariff.from_mapping(usage_type, definition)


def history_count(store: Store, table: str) -> int:
    with store.connection() as conn:
        row = conn.execute("SELECT count(*) FROM change_history WHERE table_name = %s", [table]).fetchone()
    assert row is not None
    return int(row[0])


def test_the_in_tree_driver_list_matches_the_registry() -> None:
    assert set(masterdata.DRIVER_KEYS) == set(registry.BUILTIN)
    assert "sick_flowsic500" in masterdata.modbus_profiles()


def test_reference_rows_are_created_edited_and_deactivated_with_their_history(store: Store) -> None:
    north = masterdata.save(store, "clerk", "areas", {"code": "N", "name": "城北片区"})
    masterdata.save(store, "clerk", "areas", {"code": "N1", "name": "城北一所", "parent": "N"})
    community = masterdata.save(
        store, "clerk", "communities", {"area": "N1", "code": "XF", "name": "幸福小区", "address": "幸福路 1 号"}
    )
    building = masterdata.save(
        store, "clerk", "buildings", {"community": "XF", "code": "3", "name": "3号楼", "floors": "18"}
    )
    masterdata.save(store, "supervisor", "communities", {"name": "幸福家园", "address": "幸福路 1 号"}, community)
    masterdata.save(store, "supervisor", "communities", {"name": "幸福家园"}, community)  # no change: nothing written
    masterdata.set_active(store, "supervisor", "buildings", building, False)
    with store.connection() as conn:
        tree = masterdata.list_rows(conn, "areas", size=0).rows
        assert [(r["code"], r["depth"], r["parent"]) for r in tree] == [("N", 0, None), ("N1", 1, "N")]
        row = masterdata.get_row(conn, "communities", community)
        assert (row["name"], row["area"], row["area_label"]) == ("幸福家园", "N1", "城北一所")
        entries = masterdata.history(conn, "community", community)
        assert [e.op for e in entries] == ["update", "insert"]
        assert entries[0].actor == "supervisor"
        assert [(c.field, c.old, c.new) for c in entries[0].changes] == [("name", "幸福小区", "幸福家园")]
        assert masterdata.list_rows(conn, "buildings").rows == []  # inactive rows are not listed by default
        inactive = masterdata.list_rows(conn, "buildings", active="inactive").rows
        assert [(r["code"], r["community"], r["floors"]) for r in inactive] == [("3", "XF", 18)]
        assert masterdata.list_rows(conn, "communities", "N1").rows[0]["code"] == "XF"  # by the area's code
    assert history_count(store, "building") == 2
    with pytest.raises(MasterError) as cycle:
        masterdata.save(store, "clerk", "areas", {"parent": "N1"}, north)
    assert cycle.value.code == "area_cycle"
    with pytest.raises(MasterError) as duplicate:
        masterdata.save(store, "clerk", "areas", {"code": "N", "name": "again"})
    assert (duplicate.value.code, duplicate.value.field, duplicate.value.status) == ("duplicate", "code", 409)
    with pytest.raises(MasterError) as unknown:
        masterdata.save(store, "clerk", "communities", {"area": "NOPE", "code": "X2", "name": "x"})
    assert (unknown.value.code, unknown.value.field) == ("no_ref", "area")
    with pytest.raises(MasterError) as bad:
        masterdata.save(store, "clerk", "buildings", {"community": "XF", "code": "4", "name": "4", "floors": "x"})
    assert bad.value.code == "bad_int"


def test_a_model_names_a_known_driver_and_a_modbus_model_its_profile(store: Store) -> None:
    masterdata.save(store, "clerk", "manufacturers", {"code": "SICK", "name": "SICK"})
    masterdata.save(store, "clerk", "categories", {"code": "FLOW", "name": "工业流量计"})
    with pytest.raises(MasterError) as driver:
        masterdata.save(store, "clerk", "models", {"manufacturer": "SICK", "name": "X", "driver_key": "nodriver"})
    assert driver.value.code == "bad_driver"
    with pytest.raises(MasterError) as profile:
        masterdata.save(store, "clerk", "models", {"manufacturer": "SICK", "name": "F5", "driver_key": "modbus"})
    assert profile.value.code == "profile_required"
    with pytest.raises(MasterError) as unknown:
        masterdata.save(
            store, "clerk", "models", {"manufacturer": "SICK", "name": "F5", "driver_key": "modbus", "profile": "nope"}
        )
    assert unknown.value.code == "bad_profile"
    model = masterdata.save(
        store,
        "clerk",
        "models",
        {
            "manufacturer": "SICK",
            "name": "FLOWSIC500",
            "driver_key": "modbus",
            "profile": "sick_flowsic500",
            "category": "FLOW",
            "register_max": "99999999.999",
            "has_valve": False,
        },
    )
    with store.connection() as conn:
        row = masterdata.get_row(conn, "models", model)
    assert (row["driver_key"], row["profile"], row["category"], row["register_max"]) == (
        "modbus",
        "sick_flowsic500",
        "FLOW",
        Decimal("99999999.999"),
    )


def test_a_price_period_is_added_after_the_last_and_checked_by_the_tariff(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO usage_type (code, name) VALUES ('RES', '居民'), ('COM', '商业')")
        conn.execute(
            """INSERT INTO tariff (usage_type_id, definition) SELECT id, %s FROM usage_type WHERE code = 'RES'""",
            [
                '{"cycle": "calendar_year", "periods": [{"effective_from": "2020-01-01", "price": "2.61", '
                '"fixed_charges": [{"code": "rent", "amount_per_month": "2.00"}]}]}'
            ],
        )
    with pytest.raises(MasterError) as early:
        masterdata.add_price_period(
            store, "supervisor", "RES", {"effective_from": "2019-06-01", "price": "3"}, validate
        )
    assert early.value.code == "not_after_last"
    with pytest.raises(MasterError) as bad:
        masterdata.add_price_period(
            store,
            "supervisor",
            "RES",
            {
                "effective_from": "2026-01-01",
                "tiers": [{"upper_m3": "300", "price": "2.70"}, {"upper_m3": "200", "price": "3.10"}, {"price": "3.9"}],
            },
            validate,
        )
    assert bad.value.code == "bad_tariff" and "tier bounds must increase" in bad.value.message
    before = history_count(store, "tariff")
    definition = masterdata.add_price_period(
        store,
        "supervisor",
        "RES",
        {"effective_from": date(2026, 1, 1), "tiers": [{"upper_m3": "350", "price": "2.70"}, {"price": "3.20"}]},
        validate,
    )
    assert [p["effective_from"] for p in definition["periods"]] == ["2020-01-01", "2026-01-01"]
    assert history_count(store, "tariff") == before + 1
    masterdata.add_price_period(
        store, "supervisor", "COM", {"effective_from": "2025-01-01", "price": "4.20"}, validate, cycle="month"
    )
    with store.connection() as conn:
        views = {v.usage_type: v for v in masterdata.tariffs(conn)}
    assert views["COM"].cycle == "month" and views["COM"].periods == [{"effective_from": "2025-01-01", "price": "4.20"}]
    assert len(views["RES"].periods) == 2


def test_dispatch_assign_reassign_cancel_and_installation_completes_the_order(store: Store) -> None:
    with store.transaction(actor="setup") as conn:
        ids = make_meter(conn, 1)  # AC1 has an installed meter
        conn.execute("INSERT INTO customer (customer_no, name) VALUES ('CU2', '李四'), ('CU3', '王五')")
        conn.execute(
            """INSERT INTO account (account_no, customer_id, community_id, usage_type_id, opened_on)
               SELECT 'AC' || substr(c.customer_no, 3), c.id, %s, u.id, '2026-01-01' FROM customer c, usage_type u
                WHERE c.customer_no IN ('CU2', 'CU3')""",
            [ids["community"]],
        )
        conn.execute("INSERT INTO meter (meter_no, driver_key) VALUES ('M-STOCK', 'native_json')")
    masterdata.save(store, "admin", "installers", {"code": "I01", "name": "安装一班"})
    masterdata.save(store, "admin", "installers", {"code": "I02", "name": "安装二班"})
    with store.connection() as conn:
        waiting = [w.account_no for w in masterdata.waiting_accounts(conn).rows]
    assert sorted(waiting) == ["AC2", "AC3"]
    with pytest.raises(MasterError) as has_meter:
        masterdata.assign(store, "clerk", ["AC2", "AC1"], "I01")
    assert has_meter.value.code == "has_meter"
    with store.connection() as conn:
        assert masterdata.orders(conn).rows == []  # all or none
    first, second = masterdata.assign(store, "clerk", ["AC2", "AC3"], "I01", planned_on="2026-12-01")
    with pytest.raises(MasterError) as again:
        masterdata.assign(store, "clerk", ["AC2"], "I02")
    assert again.value.code == "has_order"
    masterdata.reassign(store, "supervisor", second, "I02", note="顺路")
    masterdata.cancel_order(store, "supervisor", second, reason="客户暂不装表")
    with pytest.raises(MasterError) as closed:
        masterdata.reassign(store, "supervisor", second, "I01")
    assert closed.value.code == "not_assigned"
    meters.install(store, "M-STOCK", "AC2", date(2026, 11, 1), "0", actor="engineer")
    with store.connection() as conn:
        order, events = masterdata.get_order(conn, first)
        assert (order.status, order.meter_no) == ("installed", "M-STOCK")
        assert [(e.kind, e.actor) for e in events] == [("assign", "clerk"), ("installed", "engineer")]
        cancelled, events = masterdata.get_order(conn, second)
        assert cancelled.status == "cancelled" and cancelled.installer_code == "I02"
        assert [(e.kind, e.from_installer, e.to_installer) for e in events] == [
            ("assign", None, "I01"),
            ("reassign", "I01", "I02"),
            ("cancel", None, None),
        ]
        assert [w.account_no for w in masterdata.waiting_accounts(conn).rows] == ["AC3"]
        by_installer = {code: counts for code, _, counts in masterdata.order_counts(conn)}
        assert by_installer["I01"]["installed"] == 1 and by_installer["I02"]["cancelled"] == 1
        assert [o.id for o in masterdata.orders(conn, installer="I01", status="installed").rows] == [first]


def test_payment_groups_keep_an_account_in_one_group_and_record_who_changed_them(store: Store) -> None:
    with store.transaction(actor="setup") as conn:
        for n in (1, 2, 3):
            make_meter(conn, n)
    group = masterdata.create_group(store, "clerk", "张氏三户", ["AC1", "AC2"], note="一起缴费")
    with pytest.raises(MasterError) as taken:
        masterdata.create_group(store, "clerk", "other", ["AC3", "AC2"])
    assert (taken.value.code, taken.value.params["group"]) == ("in_group", "张氏三户")
    masterdata.add_member(store, "supervisor", group, "AC3")
    masterdata.remove_member(store, "supervisor", group, "AC1")
    with store.connection() as conn:
        _, members = masterdata.get_group(conn, group)
        assert [m.account_no for m in members] == ["AC2", "AC3"]
        assert [g.name for g in masterdata.groups(conn).rows] == ["张氏三户"]  # the refused group was not created
        assert [g.id for g in masterdata.groups(conn, "AC3").rows] == [group]
        entries = masterdata.group_history(conn, group)
    assert [(e.op, e.actor, e.changes[0].old or e.changes[0].new) for e in entries[:2]] == [
        ("remove", "supervisor", "AC1"),
        ("add", "supervisor", "AC3"),
    ]


def test_seed_demo_adds_its_records_once(store: Store) -> None:
    with store.transaction(actor="setup") as conn:
        make_meter(conn, 1)

    def totals() -> tuple[int, ...]:
        with store.connection() as conn:
            row = conn.execute(
                """SELECT (SELECT count(*) FROM meter_category), (SELECT count(*) FROM building),
                          (SELECT count(*) FROM installer), (SELECT count(*) FROM account),
                          (SELECT count(*) FROM install_order), (SELECT count(*) FROM install_order_event),
                          (SELECT count(*) FROM account_group)"""
            ).fetchone()
        assert row is not None
        return tuple(row)

    with store.transaction() as conn:
        masterdata.seed_demo(conn)
    first = totals()
    with store.transaction() as conn:
        masterdata.seed_demo(conn)
    assert totals() == first
    assert first[:6] == (4, 3, 2, 4, 2, 2)
