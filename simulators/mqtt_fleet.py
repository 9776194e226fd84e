"""A fleet of virtual gas meters publishing over a real MQTT broker.

Each meter keeps a register that grows with realistic gas use and reports it on its own schedule,
in meterhub's native JSON (single readings or a batch per message), in a platform's JSON (Huawei
IoTDA style), or as CJ/T 188 frames tunnelled by a DTU. Faults on demand: duplicates, out-of-order
and late data, garbage payloads, clock skew, register rollover and bursts after an outage. Meters
speaking native JSON answer valve commands on their downlink topic.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import paho.mqtt.client as mqtt

from simulators.gas import GasProfile

log = logging.getLogger(__name__)


@dataclass
class Faults:
    duplicate: float = 0.0  # share of messages sent twice
    out_of_order: float = 0.0  # share of messages held back and sent after the next one
    late: float = 0.0  # share of messages held back for `late_by` before sending
    late_by_s: float = 5.0
    garbage: float = 0.0  # share of messages replaced by junk bytes
    clock_skew_s: float = 0.0  # each meter's clock is off by up to ± this
    rollover_share: float = 0.0  # share of meters whose register starts just below its maximum
    outage_share: float = 0.0  # share of meters that are silent for `outage_intervals`, then send the backlog
    outage_intervals: int = 0


@dataclass
class VirtualMeter:
    meter_no: str
    address: str  # CJ/T 188 address (14 digits)
    profile: GasProfile
    register: Decimal
    register_max: Decimal
    skew: timedelta
    rng: random.Random
    valve: str = "open"
    battery_v: Decimal = Decimal("3.60")
    rssi: int = -75
    backlog: list[tuple[datetime, Decimal]] = field(default_factory=list)
    silent_for: int = 0
    credit: Decimal = Decimal("0.00")  # meter-based prepayment: remaining credit
    purchased: Decimal = Decimal("0.00")  # cumulative top-ups accepted
    purchase_seq: int = 0  # the last purchase sequence accepted; a top-up with a lower or equal one is ignored

    def advance(self, start: datetime, end: datetime) -> Decimal:
        if self.valve == "open":
            self.register += self.profile.use_m3(start, end, self.rng)
            if self.register > self.register_max:  # the register wraps like the mechanical one
                self.register -= self.register_max + Decimal("0.001")
        return self.register


Encoder = Callable[[VirtualMeter, list[tuple[datetime, Decimal]]], tuple[str, bytes]]


def native_json(prefix: str = "meters") -> Encoder:
    def encode(meter: VirtualMeter, readings: list[tuple[datetime, Decimal]]) -> tuple[str, bytes]:
        if len(readings) == 1:
            ts, volume = readings[0]
            doc: dict[str, object] = {
                "meter": meter.meter_no,
                "ts": ts.isoformat(),
                "volume_m3": str(volume),
                "valve": meter.valve,
                "battery_v": str(meter.battery_v),
                "rssi": meter.rssi,
            }
        else:
            doc = {
                "meter": meter.meter_no,
                "readings": [{"ts": int(ts.timestamp()), "volume_m3": str(v)} for ts, v in readings],
                "valve": meter.valve,
                "battery_v": str(meter.battery_v),
            }
        return f"{prefix}/{meter.meter_no}/up", json.dumps(doc).encode()

    return encode


def huawei_json(prefix: str = "$oc") -> Encoder:
    """Huawei IoTDA property reports, as the json_mapping driver's huawei sample expects them."""

    def encode(meter: VirtualMeter, readings: list[tuple[datetime, Decimal]]) -> tuple[str, bytes]:
        services = [
            {
                "service_id": "GasMeter",
                "properties": {
                    "totalVolume": float(volume),
                    "valveStatus": {"open": 0, "closed": 1}.get(meter.valve, 2),
                    "batteryVoltage": int(meter.battery_v * 1000),
                    "signalStrength": meter.rssi,
                },
                "event_time": ts.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ"),
            }
            for ts, volume in readings
        ]
        topic = f"{prefix}/devices/{meter.meter_no}/sys/properties/report"
        return topic, json.dumps({"services": services}).encode()

    return encode


def cjt188_metering(meter: VirtualMeter, ts: datetime, volume: Decimal, clock_offset: timedelta) -> bytes:
    """901F data: cumulative and settlement volume (m³, 2 decimals), the meter's local clock, ST."""
    from drivers.cjt188.frame import decimal_to_bcd

    local = (ts + clock_offset).replace(tzinfo=None)
    clock = bytes(
        int(f"{v:02d}", 16)
        for v in (local.second, local.minute, local.hour, local.day, local.month, local.year % 100, local.year // 100)
    )
    hundredths = volume.quantize(Decimal("0.01"), rounding="ROUND_DOWN")
    volume_bcd = decimal_to_bcd(hundredths, 4, 2) + b"\x2c"
    return volume_bcd + volume_bcd + clock + cjt188_status(meter)


def cjt188_status(meter: VirtualMeter) -> bytes:
    """ST: valve in bits 1–0 (an armed valve is still closed), battery low in bit 2."""
    valve_bits = {"open": 0b00, "closed": 0b01, "armed": 0b01}.get(meter.valve, 0b11)
    battery_bit = 0b100 if meter.battery_v < Decimal("3.3") else 0
    return bytes([valve_bits | battery_bit, 0])


def cjt188_push(prefix: str = "cjt188", clock_offset: timedelta = timedelta(hours=8), as_hex: bool = True) -> Encoder:
    """NB-IoT modules pushing CJ/T 188 901F data frames (function 04), one frame per reading, as hex text
    (or binary with `as_hex=False`)."""
    from drivers.cjt188.frame import Frame, encode_frame

    def encode(meter: VirtualMeter, readings: list[tuple[datetime, Decimal]]) -> tuple[str, bytes]:
        frames = []
        for ts, volume in readings:
            payload = cjt188_metering(meter, ts, volume, clock_offset)
            frame = Frame(meter_type=0x30, address=meter.address, control=0x04, di=0x901F, ser=0, payload=payload)
            frames.append(encode_frame(frame, preamble=2))
        data = b"".join(frames)
        return f"{prefix}/{meter.meter_no}/up", data.hex(" ").upper().encode() if as_hex else data

    return encode


class Fleet:
    """Virtual meters on a simulated clock that may run faster than the wall clock."""

    def __init__(
        self,
        size: int,
        encoder: Encoder,
        interval: timedelta = timedelta(hours=1),
        readings_per_message: int = 1,
        faults: Faults | None = None,
        seed: int = 1,
        first_meter: int = 1,
        start: datetime | None = None,
    ) -> None:
        self.encoder = encoder
        self.interval = interval
        self.readings_per_message = readings_per_message
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.now = (start or datetime.now(UTC)).replace(microsecond=0)
        self.meters = [self._make(i) for i in range(first_meter, first_meter + size)]
        self._held: list[tuple[float, str, bytes]] = []  # (send after, topic, payload) for late data

    def _make(self, n: int) -> VirtualMeter:
        rng = random.Random(self.rng.random())
        register_max = Decimal("99999.999")
        near_max = rng.random() < self.faults.rollover_share
        register = register_max - Decimal("0.500") if near_max else Decimal(rng.randint(0, 5000)) + Decimal("0.125")
        skew = timedelta(seconds=rng.uniform(-1, 1) * self.faults.clock_skew_s)
        kind = "commercial" if n % 20 == 0 else "residential"
        return VirtualMeter(f"M{n:08d}", f"{n:014d}", GasProfile.draw(rng, kind), register, register_max, skew, rng)

    def tick(self) -> Iterator[tuple[str, bytes]]:
        """Advance the simulated clock by one interval; yield the messages the fleet sends."""
        start, self.now = self.now, self.now + self.interval
        f = self.faults
        for meter in self.meters:
            volume = meter.advance(start, self.now)
            meter.backlog.append((self.now + meter.skew, volume))
            if meter.silent_for == 0 and f.outage_intervals and self.rng.random() < f.outage_share / 10:
                meter.silent_for = f.outage_intervals
            if meter.silent_for:
                meter.silent_for -= 1
                continue
            if len(meter.backlog) < self.readings_per_message and not f.outage_intervals:
                continue
            topic, payload = self.encoder(meter, meter.backlog)
            meter.backlog = []
            yield from self._with_faults(topic, payload)

    def _with_faults(self, topic: str, payload: bytes) -> Iterator[tuple[str, bytes]]:
        f, rng = self.faults, self.rng
        if rng.random() < f.garbage:
            yield topic, bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))
            return
        if rng.random() < f.late:
            self._held.append((time.monotonic() + f.late_by_s, topic, payload))
            return
        if rng.random() < f.out_of_order:
            self._held.append((0.0, topic, payload))  # goes out after the next message
            return
        yield topic, payload
        if rng.random() < f.duplicate:
            yield topic, payload
        now = time.monotonic()
        due = [h for h in self._held if h[0] <= now]
        self._held = [h for h in self._held if h[0] > now]
        for _, held_topic, held_payload in due:
            yield held_topic, held_payload

    def flush_held(self) -> Iterator[tuple[str, bytes]]:
        held, self._held = self._held, []
        for _, topic, payload in held:
            yield topic, payload


class FleetRunner:
    """Publishes a fleet over MQTT at `speed` × real time and answers native JSON downlinks."""

    def __init__(
        self, fleet: Fleet, host: str, port: int, speed: float = 1.0, mqtt5: bool = True, prefix: str = "meters"
    ) -> None:
        self.fleet = fleet
        self.speed = speed
        self.prefix = prefix
        self.sent = 0
        self.acknowledged = 0
        self._stop = threading.Event()
        self._by_no = {m.meter_no: m for m in fleet.meters}
        # Command faults and bookkeeping, per meter number.
        self.executed: list[tuple[str, str]] = []  # (meter_no, cmd) of every command the meters acted on
        self.drop_replies: dict[str, int] = {}  # act on the next n commands but drop their replies
        self.mute: set[str] = set()  # never act, never answer
        self.sleepy: set[str] = set()  # listen only for `awake_s` after their own uplink
        self.awake_s = 5.0
        self._awake_until: dict[str, float] = {}
        self._command_lock = threading.Lock()
        protocol = mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"meterhub-sim-{id(self):x}", protocol=protocol
        )
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_downlink
        self.client.on_publish = self._on_publish
        self.client.connect(host, port)

    def _on_publish(self, *args: object) -> None:
        self.acknowledged += 1

    def _on_connect(self, client: mqtt.Client, *args: object) -> None:
        client.subscribe(f"{self.prefix}/+/down", qos=1)

    def _on_downlink(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        meter = self._by_no.get(message.topic.split("/")[-2])
        if meter is None:
            return
        try:
            command = json.loads(message.payload)
            kind = command["cmd"]
        except (ValueError, KeyError, TypeError):
            return
        no = meter.meter_no
        if no in self.mute or (no in self.sleepy and self._awake_until.get(no, 0.0) < time.monotonic()):
            return  # a sleeping radio hears nothing
        with self._command_lock:
            ok = kind in ("valve_open", "valve_close", "valve_arm", "read", "credit")
            reply: dict[str, object] = {"id": command.get("id")}
            if kind == "valve_close":
                meter.valve = "closed"
            elif kind == "valve_open":
                meter.valve = "open"
            elif kind == "valve_arm":  # the customer restores supply on site: press_button()
                meter.valve = "armed" if meter.valve != "open" else "open"
            elif kind == "credit":
                seq, amount = int(command.get("seq", 0)), Decimal(str(command.get("amount", "0")))
                if seq > meter.purchase_seq:
                    meter.purchase_seq, meter.credit, meter.purchased = (
                        seq,
                        meter.credit + amount,
                        meter.purchased + amount,
                    )
                else:
                    reply["duplicate"] = True
            if ok and kind != "read" and not reply.get("duplicate"):
                self.executed.append((no, kind))
            reply.update(
                ok=ok,
                valve=meter.valve,
                volume_m3=str(meter.register),
                credit_cny=str(meter.credit),
                purchased_cny=str(meter.purchased),
                seq=meter.purchase_seq,
                ts=self.fleet.now.isoformat(),
            )
            if self.drop_replies.get(no, 0) > 0:
                self.drop_replies[no] -= 1
                return
        client.publish(f"{self.prefix}/{no}/reply", json.dumps(reply), qos=1)

    def press_button(self, meter_no: str) -> None:
        """The customer opens an armed valve on site."""
        meter = self._by_no[meter_no]
        if meter.valve == "armed":
            meter.valve = "open"

    def uplink(self, meter_no: str) -> None:
        """One reading now from this meter (with its valve state); a sleepy meter then listens for `awake_s`."""
        meter = self._by_no[meter_no]
        self._awake_until[meter_no] = time.monotonic() + self.awake_s
        topic, payload = self.fleet.encoder(meter, [(datetime.now(UTC).replace(microsecond=0), meter.register)])
        self.client.publish(topic, payload, qos=1)
        self.sent += 1

    def run(self, ticks: int | None = None) -> int:
        self.client.loop_start()
        period = self.fleet.interval.total_seconds() / self.speed
        done = 0
        next_at = time.monotonic()
        try:
            while not self._stop.is_set() and (ticks is None or done < ticks):
                for topic, payload in self.fleet.tick():
                    self.client.publish(topic, payload, qos=1)
                    self.sent += 1
                done += 1
                next_at += period
                self._stop.wait(max(0.0, next_at - time.monotonic()))
            for topic, payload in self.fleet.flush_held():
                self.client.publish(topic, payload, qos=1)
                self.sent += 1
            deadline = time.monotonic() + 60
            while self.acknowledged < self.sent and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            self.client.loop_stop()
        return self.sent

    def stop(self) -> None:
        self._stop.set()
