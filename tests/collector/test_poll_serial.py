"""CJ/T 188 and M-Bus meters on pseudo-terminals → poller → PostgreSQL, with line faults; the same lines
behind a TCP serial gateway (our own relay, and socat); the meter clock in either byte order."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from collector.poll_devices import Cjt188Reader
from collector.poll_plan import build_plan, bus_workarounds
from drivers.cjt188.settings import Workarounds
from drivers.transports.serial_line import SerialLine
from meterhub.store import Store
from simulators.serial_meters import CHINA, Cjt188Bus, Cjt188Meter, Faults, MbusMeter, MbusSegment, SerialGateway
from tests.collector.helpers import wait_until
from tests.collector.poll_helpers import (
    add_meters,
    events,
    free_port,
    latest,
    meter_valve,
    poller_settings,
    readings_count,
    rejected,
    require_tool,
    running_poller,
)

A1, A2, A3 = "00000012345678", "00000012345679", "00000012345680"


@pytest.fixture
def cjt188_bus() -> Iterator[Cjt188Bus]:
    meters = [
        Cjt188Meter(A1, volume_m3=Decimal("123.45"), valve_closed=True),
        Cjt188Meter(A2, volume_m3=Decimal("6789.01"), battery_low=True),
    ]
    bus = Cjt188Bus(meters).start()
    yield bus
    bus.stop()


def serial_bus(name: str, protocol: str, path: str, **extra: object) -> dict[str, object]:
    return {"name": name, "protocol": protocol, "device": path, "baudrate": 2400, "parity": "E", **extra}


def test_cjt188_meters_metering_purchase_and_history_reach_the_store(store: Store, cjt188_bus: Cjt188Bus) -> None:
    meters = add_meters(store, 2, "cjt188")
    settings = poller_settings(
        [serial_bus("rs485", "cjt188", cjt188_bus.path)],
        [
            {"meter_no": meters[0], "bus": "rs485", "address": A1, "reads": ["purchase", "history"]},
            {"meter_no": meters[1], "bus": "rs485", "address": A2},
        ],
    )
    with running_poller(store, settings):
        wait_until(lambda: all(readings_count(store, m) >= 1 for m in meters), 15, "both meters read")
        wait_until(lambda: "credit_remaining_cny" in latest(store, meters[0]), 10, "purchase data")
    first = latest(store, meters[0])
    assert first["volume_m3"] == Decimal("123.45")
    assert first["settlement_volume_m3"] == Decimal("100.00")
    assert first["credit_remaining_cny"] == Decimal("88.50")
    assert first["credit_purchased_total_cny"] == Decimal("300.00")
    assert first["settlement_volume_m3_month_1"] == Decimal("95.00")
    assert latest(store, meters[1])["volume_m3"] == Decimal("6789.01")
    assert meter_valve(store, meters[0]) == ("closed", "closed")
    assert [m for m, _ in events(store, "battery_low")] == [meters[1]]


def test_bad_checksum_garbage_and_partial_frames_are_dead_lettered_and_the_next_frame_recovers(
    store: Store, cjt188_bus: Cjt188Bus
) -> None:
    cjt188_bus.meters[A1].faults.script = deque(["bad_checksum", "garbage", "partial"])
    [meter] = add_meters(store, 1, "cjt188")
    settings = poller_settings(
        [serial_bus("rs485", "cjt188", cjt188_bus.path)],
        [{"meter_no": meter, "bus": "rs485", "address": A1}],
        retries=3,
        timeout_s=0.4,
    )
    with running_poller(store, settings) as poller:
        wait_until(lambda: readings_count(store, meter) >= 1, 15, "a good reading after the faults")
        wait_until(lambda: len(rejected(store)) >= 3, 5, "the bad frames dead-lettered")
    reasons = [reason for reason, _, _ in rejected(store)]
    assert reasons[0] == "bad_checksum"
    assert "garbage" in reasons and "truncated" in reasons
    raw = rejected(store)[0][1]
    assert raw.startswith(b"\x68\x30") and raw.endswith(b"\x16"), "the bad frame is kept byte for byte"
    assert all(source.startswith("cjt188:") for _, _, source in rejected(store))
    assert latest(store, meter)["volume_m3"] == Decimal("123.45")
    assert not events(store, "offline")
    assert poller.stats["polls_failed"] == 0, "retries within one poll absorbed the faults"


def test_a_dead_meter_does_not_delay_the_others_beyond_its_timeout(store: Store, cjt188_bus: Cjt188Bus) -> None:
    meters = add_meters(store, 3, "cjt188")
    settings = poller_settings(
        [serial_bus("rs485", "cjt188", cjt188_bus.path)],
        [
            {"meter_no": meters[0], "bus": "rs485", "address": A1},
            {"meter_no": meters[1], "bus": "rs485", "address": A3},  # nobody answers there
            {"meter_no": meters[2], "bus": "rs485", "address": A2},
        ],
        interval_s=0.5,
        timeout_s=0.3,
        offline_after=2,
    )
    with running_poller(store, settings) as poller:
        started = time.monotonic()
        wait_until(lambda: events(store, "offline"), 10, "the dead meter raised offline")
        time.sleep(2.0)
        elapsed = time.monotonic() - started
    assert [m for m, _ in events(store, "offline")] == [meters[1]]
    # each live meter is due every 0.5 s; the dead one costs ≤ 0.3 s per attempt and is backed off
    assert poller.stats["polls_ok"] / elapsed >= 2 * 0.7 / 0.5
    assert poller.devices[meters[1]].offline


def test_a_bus_of_vendor_meters_is_read_with_its_workarounds(store: Store) -> None:
    """A 2018-style vendor: DI little-endian, clock century first, status bits numbered from the top."""
    dialect = {"di_order": "little", "clock_order": "cc_first", "status_bit_order": "msb_first", "preamble": 3}
    meters = [Cjt188Meter(A1, volume_m3=Decimal("321.09"), valve_closed=True)]
    bus = Cjt188Bus(meters, workarounds=Workarounds.from_mapping(dialect)).start()  # the meters speak it too
    [meter] = add_meters(store, 1, "cjt188")
    settings = poller_settings(
        [serial_bus("vendor", "cjt188", bus.path, workarounds=dialect)],
        [{"meter_no": meter, "bus": "vendor", "address": A1, "reads": ["purchase"]}],
    )
    assert bus_workarounds(build_plan(settings)[0].bus).preamble == 3
    try:
        with running_poller(store, settings):
            wait_until(lambda: "credit_remaining_cny" in latest(store, meter), 15, "metering and purchase data")
    finally:
        bus.stop()
    assert latest(store, meter)["volume_m3"] == Decimal("321.09")
    assert meter_valve(store, meter) == ("closed", "closed"), "status bits read from the top"
    assert rejected(store) == []


def test_workarounds_are_checked_per_bus() -> None:
    with pytest.raises(ValueError, match=r"bus 'vendor': cjt188: workarounds\.di_order must be one of big, little"):
        build_plan(
            poller_settings([serial_bus("vendor", "cjt188", "/dev/null", workarounds={"di_order": "middle"})], [])
        )
    with pytest.raises(ValueError, match="workarounds apply to cjt188 buses only"):
        poller_settings([serial_bus("m", "mbus", "/dev/null", workarounds={"di_order": "little"})], [])
    with pytest.raises(ValueError, match=r"preamble and workarounds\.preamble differ"):
        build_plan(
            poller_settings([serial_bus("v", "cjt188", "/dev/null", preamble=2, workarounds={"preamble": 4})], [])
        )


def test_read_the_address_of_the_only_meter_on_the_line() -> None:
    bus = Cjt188Bus([Cjt188Meter(A3)]).start()

    async def ask() -> str | None:
        line = SerialLine(bus.path, 2400, 8, "E", 1)
        reader = Cjt188Reader(line, timeout_s=1.0, retries=1, workarounds=Workarounds(preamble=4))
        try:
            return await reader.read_address()
        finally:
            line.close()

    try:
        assert asyncio.run(ask()) == A3
    finally:
        bus.stop()


@pytest.fixture
def mbus_segment() -> Iterator[MbusSegment]:
    meters = [
        MbusMeter(5, "12345678", volume_m3=Decimal("1234.567"), telegrams=2),
        MbusMeter(6, "87654321", volume_m3=Decimal("42.000")),
    ]
    segment = MbusSegment(meters).start()
    yield segment
    segment.stop()


def test_mbus_primary_and_secondary_addressing_with_multi_telegram_answers(
    store: Store, mbus_segment: MbusSegment
) -> None:
    meters = add_meters(store, 2, "mbus")
    settings = poller_settings(
        [serial_bus("mbus", "mbus", mbus_segment.path)],
        [
            {"meter_no": meters[0], "bus": "mbus", "address": "5"},
            {"meter_no": meters[1], "bus": "mbus", "address": "87654321"},
        ],
    )
    with running_poller(store, settings):
        wait_until(lambda: "volume_m3_storage_2" in latest(store, meters[0]), 15, "both telegrams of meter 5")
        wait_until(lambda: readings_count(store, meters[1]) >= 1, 10, "the secondary-addressed meter")
    assert latest(store, meters[0]) == {
        "volume_m3": Decimal("1234.567"),
        "flow_m3h": Decimal("0.85"),
        "volume_m3_storage_1": Decimal("1200.000"),
        "volume_m3_storage_2": Decimal("1150.000"),
    }
    assert latest(store, meters[1])["volume_m3"] == Decimal("42.000")
    assert rejected(store) == []


def test_mbus_bad_checksum_is_dead_lettered_and_the_repeated_request_recovers(
    store: Store, mbus_segment: MbusSegment
) -> None:
    mbus_segment.meters[1].faults = Faults(script=deque(["none", "bad_checksum", "no_answer"]))
    [meter] = add_meters(store, 1, "mbus")
    settings = poller_settings(
        [serial_bus("mbus", "mbus", mbus_segment.path)],
        [{"meter_no": meter, "bus": "mbus", "address": "6"}],
        retries=2,
        timeout_s=0.3,
    )
    with running_poller(store, settings):
        wait_until(lambda: readings_count(store, meter) >= 1, 15, "a reading after the faults")
    assert [reason for reason, _, _ in rejected(store)] == ["bad_checksum"]
    assert latest(store, meter)["volume_m3"] == Decimal("42.000")


# --- behind a TCP serial gateway (serial-to-Ethernet converter, transparent mode) ---------------------


def gateway_bus(name: str, protocol: str, gateway: SerialGateway, **extra: object) -> dict[str, object]:
    return {"name": name, "protocol": protocol, "host": gateway.host, "port": gateway.port, **extra}


def test_cjt188_meters_through_a_tcp_serial_gateway_with_faults_and_a_gateway_restart(
    store: Store, cjt188_bus: Cjt188Bus
) -> None:
    cjt188_bus.meters[A2].faults.script = deque(["bad_checksum", "garbage", "no_answer"])
    gateway = SerialGateway(cjt188_bus.path).start()
    meters = add_meters(store, 2, "cjt188")
    settings = poller_settings(
        [gateway_bus("gw", "cjt188", gateway)],
        [
            {"meter_no": meters[0], "bus": "gw", "address": A1, "reads": ["purchase", "history"]},
            {"meter_no": meters[1], "bus": "gw", "address": A2},
        ],
        interval_s=0.3,
        retries=3,
        timeout_s=0.4,
    )
    try:
        with running_poller(store, settings) as poller:
            wait_until(lambda: all(readings_count(store, m) >= 1 for m in meters), 15, "both meters read")
            wait_until(lambda: "settlement_volume_m3_month_1" in latest(store, meters[0]), 10, "history data")
            before = readings_count(store, meters[0])
            gateway.drop_client()  # the converter restarts: the poller connects again
            wait_until(lambda: readings_count(store, meters[0]) >= before + 3, 15, "readings after the restart")
    finally:
        gateway.stop()
    assert gateway.connections >= 2
    first = latest(store, meters[0])
    assert first["volume_m3"] == Decimal("123.45") and first["credit_remaining_cny"] == Decimal("88.50")
    assert first["settlement_volume_m3_month_1"] == Decimal("95.00")
    assert latest(store, meters[1])["volume_m3"] == Decimal("6789.01")
    assert meter_valve(store, meters[0]) == ("closed", "closed")
    reasons = [reason for reason, _, _ in rejected(store)]
    assert reasons[:2] == ["bad_checksum", "garbage"]
    assert {source for _, _, source in rejected(store)} == {f"cjt188:127.0.0.1:{gateway.port}/{A2}"}
    assert not events(store, "offline")
    assert poller.stats["polls_failed"] == 0, "retries absorbed the faults, the restart cost no poll"


def test_mbus_meters_through_a_tcp_serial_gateway(store: Store, mbus_segment: MbusSegment) -> None:
    gateway = SerialGateway(mbus_segment.path).start()
    meters = add_meters(store, 2, "mbus")
    settings = poller_settings(
        [gateway_bus("mbus-gw", "mbus", gateway)],
        [
            {"meter_no": meters[0], "bus": "mbus-gw", "address": "5"},
            {"meter_no": meters[1], "bus": "mbus-gw", "address": "87654321"},
        ],
    )
    try:
        with running_poller(store, settings):
            wait_until(lambda: "volume_m3_storage_2" in latest(store, meters[0]), 15, "both telegrams of meter 5")
            wait_until(lambda: readings_count(store, meters[1]) >= 2, 10, "the secondary-addressed meter, twice")
    finally:
        gateway.stop()
    assert latest(store, meters[0]) == {
        "volume_m3": Decimal("1234.567"),
        "flow_m3h": Decimal("0.85"),
        "volume_m3_storage_1": Decimal("1200.000"),
        "volume_m3_storage_2": Decimal("1150.000"),
    }
    assert latest(store, meters[1])["volume_m3"] == Decimal("42.000")
    assert rejected(store) == []
    with store.connection() as conn:
        sources = {r[0] for r in conn.execute("SELECT DISTINCT source FROM reading").fetchall()}
    assert sources == {f"mbus:127.0.0.1:{gateway.port}/5", f"mbus:127.0.0.1:{gateway.port}/87654321"}


def test_cjt188_through_socat_as_the_gateway(store: Store, cjt188_bus: Cjt188Bus) -> None:
    """The same with a gateway that is not ours: socat relaying a TCP port to the line."""
    port = free_port()
    socat = subprocess.Popen(
        [require_tool("socat"), f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", f"FILE:{cjt188_bus.path},raw,echo=0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    meters = add_meters(store, 2, "cjt188")
    settings = poller_settings(
        [{"name": "socat", "protocol": "cjt188", "host": "127.0.0.1", "port": port}],
        [
            {"meter_no": meters[0], "bus": "socat", "address": A1},
            {"meter_no": meters[1], "bus": "socat", "address": A2},
        ],
    )
    try:
        with running_poller(store, settings):  # connects as soon as socat listens (a failed connect is retried)
            wait_until(lambda: all(readings_count(store, m) >= 2 for m in meters), 20, "both meters, twice")
    finally:
        socat.terminate()
        socat.wait(5)
    assert latest(store, meters[0])["volume_m3"] == Decimal("123.45")
    assert latest(store, meters[1])["volume_m3"] == Decimal("6789.01")
    assert rejected(store) == []


# --- the meter's clock ------------------------------------------------------------------------------

CLOCK_OFFSET = -timedelta(days=40, hours=5, minutes=17, seconds=23)  # far from any receive time


@pytest.mark.parametrize("order", ["ss_first", "cc_first"])
def test_the_meter_clock_in_either_byte_order_is_the_reading_time_in_the_store(store: Store, order: str) -> None:
    """A meter whose clock runs 40 days behind, sending it `ss mm hh DD MM YY CC` or the reverse: with the bus
    set to the same `clock_order`, each reading is stored at the meter's clock, to the second, as UTC."""
    meter = Cjt188Meter(A1, volume_m3=Decimal("77.70"), clock_offset=CLOCK_OFFSET)
    bus = Cjt188Bus([meter], workarounds=Workarounds(clock_order=order, clock_utc_offset=CHINA)).start()
    [meter_no] = add_meters(store, 1, "cjt188")
    settings = poller_settings(
        [serial_bus("rs485", "cjt188", bus.path, workarounds={"clock_order": order})],
        [{"meter_no": meter_no, "bus": "rs485", "address": A1}],
        interval_s=0.3,
    )
    try:
        with running_poller(store, settings):
            wait_until(lambda: readings_count(store, meter_no) >= 3, 15, "three readings")
    finally:
        bus.stop()
    with store.connection() as conn:
        rows = conn.execute(
            """SELECT r.ts, r.received_at FROM reading r JOIN meter m ON m.id = r.meter_id
                WHERE m.meter_no = %s AND r.channel = 'volume_m3' ORDER BY r.ts""",
            [meter_no],
        ).fetchall()
        state = conn.execute(
            "SELECT s.last_reading_at FROM meter_state s JOIN meter m ON m.id = s.meter_id WHERE m.meter_no = %s",
            [meter_no],
        ).fetchone()
    sent: deque[datetime] = meter.clocks_sent
    assert len(rows) >= 3
    for ts, received_at in rows:
        assert ts in sent, f"{ts} is not a clock the meter sent"
        assert abs(received_at + CLOCK_OFFSET - ts) < timedelta(seconds=3), "the meter's clock, not the receive time"
    assert state is not None and state[0] == rows[-1][0]
    assert latest(store, meter_no)["volume_m3"] == Decimal("77.70")
    assert rejected(store) == []
