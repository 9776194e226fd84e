"""System settings: typed values with defaults, all-or-nothing saves, the logo, menu names and order, print
templates and their CSS, amounts in Chinese capitals; the kiosk's PINs and lockout."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from meterhub import kiosk
from meterhub import system_settings as ss
from meterhub.kiosk import KioskError, Limits
from meterhub.store import Store
from meterhub.system_settings import SettingsError, TemplateInput
from tests.meterhub.factories import make_meter

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def test_defaults_then_typed_saves_all_or_nothing(store: Store) -> None:
    with store.connection() as conn:
        values = ss.load(conn)
    assert values["company.name"] == "" and values["kiosk.lockout_failures"] == 5 and values["kiosk.enabled"] is True
    with store.transaction() as conn:
        changes = ss.save(conn, {"company.name": " 城东燃气 ", "kiosk.lockout_failures": "3"}, "admin")
    assert changes == {"company.name": ("", "城东燃气"), "kiosk.lockout_failures": (5, 3)}
    for bad, field in (
        ({"company.name": "新名", "kiosk.lockout_min": "0"}, "kiosk.lockout_min"),
        ({"company.name": "新名", "kiosk.readings": "six"}, "kiosk.readings"),
        ({"company.hotline": "x" * 41}, "company.hotline"),
        ({"company.name": "a\nb"}, "company.name"),
        ({"no.such": "1"}, "no.such"),
    ):
        with pytest.raises(SettingsError) as refused, store.transaction() as conn:
            ss.save(conn, bad, "admin")
        assert refused.value.field == field
    with store.connection() as conn:
        assert ss.load(conn, ["company.name", "kiosk.lockout_failures"]) == {
            "company.name": "城东燃气",
            "kiosk.lockout_failures": 3,
        }
        assert ss.console_look(conn).company_name == "城东燃气"


def test_the_logo_must_be_a_small_image(store: Store) -> None:
    with pytest.raises(SettingsError) as refused, store.transaction() as conn:
        ss.set_logo(conn, b"<svg onload=alert(1)>", "x.svg", "admin")
    assert refused.value.code == "not_an_image"
    with pytest.raises(SettingsError), store.transaction() as conn:
        ss.set_logo(conn, PNG + b"\x00" * ss.LOGO_MAX_BYTES, "big.png", "admin")
    with store.transaction() as conn:
        assert ss.set_logo(conn, PNG, "logo.png", "admin") == "image/png"
    with store.connection() as conn:
        found = ss.logo(conn)
        assert found is not None and found[0] == PNG and found[1] == "image/png"
        assert ss.console_look(conn).logo_version is not None
    with store.transaction() as conn:
        assert ss.clear_logo(conn)
    with store.connection() as conn:
        assert ss.logo(conn) is None and ss.console_look(conn).logo_version is None


def test_menu_names_and_order_then_reset(store: Store) -> None:
    keys = ["nav.home", "nav.customers", "nav.meters", "customers.title"]
    with store.transaction() as conn:
        ss.save_menu(
            conn,
            keys,
            {"nav.meters": "1", "nav.home": "", "nav.customers": "5"},
            {"zh": {"nav.customers": " 用户档案 ", "customers.title": ""}, "en": {"nav.customers": "Clients"}},
            "admin",
        )
    with store.connection() as conn:
        look = ss.console_look(conn)
    assert look.ordered(["nav.home", "nav.customers", "nav.meters"]) == ["nav.meters", "nav.customers", "nav.home"]
    assert look.label("zh", "nav.customers") == "用户档案" and look.label("en", "nav.customers") == "Clients"
    assert look.label("zh", "customers.title") is None
    with pytest.raises(SettingsError), store.transaction() as conn:
        ss.save_menu(conn, keys, {"nav.meters": "x"}, {}, "admin")
    with pytest.raises(SettingsError), store.transaction() as conn:
        ss.save_menu(conn, keys, {}, {"zh": {"nav.nothing": "x"}}, "admin")
    with store.transaction() as conn:
        assert ss.reset_menu(conn) == 2
    with store.connection() as conn:
        assert ss.console_look(conn) == ss.ConsoleLook()


def _receipt_input(**changes: object) -> TemplateInput:
    values: dict[str, object] = {
        "kind": "receipt",
        "name": "窄收据",
        "paper_width_mm": "80",
        "paper_height_mm": "120",
        "font_size_pt": "9",
        "printer_name": "EPSON LQ-630K",
        "fields": {
            "receipt_no": {"x": "5", "y": "10", "w": "70", "size": ""},
            "amount": {"x": "5", "y": "20.25", "w": "100", "size": "12"},
        },
    }
    values.update(changes)
    return TemplateInput(**values)  # type: ignore[arg-type]


def test_print_templates_checked_placed_and_styled(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("SELECT meterhub_print_template_defaults()")
        shipped = ss.default_template(conn, "receipt")
        assert shipped is not None and shipped.is_default
        template_id = ss.save_template(conn, None, _receipt_input(), "admin")
    with store.connection() as conn:
        template = ss.get_template(conn, template_id)
    assert not template.is_default and template.printer_name == "EPSON LQ-630K"
    amount = next(p for p in template.fields if p.field == "amount")
    assert (amount.y, amount.w, amount.size) == (Decimal("20.3"), Decimal("75.0"), Decimal("12.0"))  # kept on paper
    css = ss.stylesheet(template)
    assert "@page { size: 80mm 120mm; margin: 0; }" in css
    assert ".f1 { left: 5mm; top: 20.3mm; width: 75mm; font-size: 12pt; }" in css
    filled = ss.fill(template, {"receipt_no": "R1", "amount": "12.00"})
    assert [(f.field, f.text, f.css_class) for f in filled] == [("receipt_no", "R1", "f0"), ("amount", "12.00", "f1")]
    for bad, field in (
        ({"paper_width_mm": "5"}, "paper_width_mm"),
        ({"name": ""}, "name"),
        ({"fields": {"receipt_no": {"x": "90", "y": "1"}}}, "receipt_no.x"),
        ({"fields": {"invoice_no": {"x": "1", "y": "1"}}}, "invoice_no"),
        ({"fields": {}}, "fields"),
        ({"name": shipped.name}, "name"),
    ):
        with pytest.raises(SettingsError) as refused, store.transaction() as conn:
            ss.save_template(conn, None, _receipt_input(**bad), "admin")
        assert refused.value.field == field
    with store.transaction() as conn:
        with pytest.raises(SettingsError):
            ss.delete_template(conn, shipped.id)
        ss.make_default(conn, template_id, "admin")
        ss.delete_template(conn, shipped.id)
        default = ss.default_template(conn, "receipt")
        assert default is not None and default.id == template_id


@pytest.mark.parametrize(
    ("amount", "words"),
    [
        ("0", "零元整"),
        ("0.05", "伍分"),
        ("1234.50", "壹仟贰佰叁拾肆元伍角整"),
        ("1001.05", "壹仟零壹元零伍分"),
        ("100000", "壹拾万元整"),
        ("10010", "壹万零壹拾元整"),
        ("268.50", "贰佰陆拾捌元伍角整"),
        ("100000001.10", "壹亿零壹元壹角整"),
    ],
)
def test_amount_in_words(amount: str, words: str) -> None:
    assert ss.amount_in_words(Decimal(amount)) == words


def test_kiosk_pin_right_wrong_and_lockout(store: Store) -> None:
    with store.transaction(actor="setup") as conn:
        make_meter(conn, 1)
        with pytest.raises(KioskError):
            kiosk.set_pin(conn, "AC1", "12ab", "clerk")
        kiosk.set_pin(conn, "AC1", "2468", "clerk")
        stored = conn.execute("SELECT pin_hash FROM kiosk_pin").fetchone()
        assert stored is not None and "2468" not in stored[0] and stored[0].startswith("$argon2id$")
    limits = Limits(lockout_failures=3, lockout_min=15, ip_failures=100)
    with store.transaction() as conn:
        assert kiosk.check(conn, limits, "AC1", "2468", "10.0.0.1").ok
        assert kiosk.check(conn, limits, "NOPE", "2468", "10.0.0.1").reason == "wrong"
        for _ in range(3):
            assert kiosk.check(conn, limits, "AC1", "0000", "10.0.0.2").reason == "wrong"
        locked = kiosk.check(conn, limits, "AC1", "2468", "10.0.0.3")
    assert locked.reason == "locked" and not locked.ok and 0 < locked.retry_after_s <= 15 * 60
    with store.connection() as conn:
        assert [r.locked for r in kiosk.pins(conn, limits)] == [True]
    with store.transaction() as conn:  # a new PIN ends the lockout
        conn.execute("UPDATE kiosk_attempt SET at = at - interval '1 second'")
        kiosk.set_pin(conn, "AC1", "13579", "clerk")
        assert kiosk.check(conn, limits, "AC1", "13579", "10.0.0.3").ok
    by_address = Limits(lockout_failures=100, lockout_min=15, ip_failures=2)
    with store.transaction() as conn:
        kiosk.check(conn, by_address, "X1", "1", "10.0.0.9")
        kiosk.check(conn, by_address, "X2", "1", "10.0.0.9")
        assert kiosk.check(conn, by_address, "AC1", "13579", "10.0.0.9").reason == "ip_blocked"
        assert kiosk.clear_pin(conn, "AC1")
        assert kiosk.check(conn, by_address, "AC1", "13579", "10.0.0.8").reason == "wrong"


def test_recent_readings_newest_first(store: Store) -> None:
    with store.transaction(actor="setup") as conn:
        ids = make_meter(conn, 1)
        start = dt.datetime(2025, 3, 1, 8, tzinfo=dt.UTC)
        for day in range(10):
            conn.execute(
                "INSERT INTO reading (meter_id, channel, ts, value) VALUES (%s, 'volume_m3', %s, %s)",
                [ids["meter"], start + dt.timedelta(days=day), Decimal("100.5") + day],
            )
        readings = kiosk.recent_readings(conn, ids["account"], 3)
    assert [r.value for r in readings] == [Decimal("109.5"), Decimal("108.5"), Decimal("107.5")]


def test_settings_seed_demo_is_idempotent(store: Store) -> None:
    with store.transaction() as conn:
        make_meter(conn, 1)
        ss.seed_demo(conn)
        ss.seed_demo(conn)
        rows = conn.execute(
            "SELECT (SELECT count(*) FROM system_setting), (SELECT count(*) FROM print_template), "
            "(SELECT count(*) FROM kiosk_pin)"
        ).fetchone()
        assert kiosk.check(conn, Limits(), "AC1", ss.DEMO_KIOSK_PIN, None).ok
    assert rows == (4, 2, 1)
