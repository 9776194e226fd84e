"""CJ/T 188 meters behind DTUs that answer the master's frames on their DTU down topic.

The fleet pushes with `cjt188_push` (as hex text); a frame arriving on `{prefix}/{meter_no}/down` (hex text
or binary) is executed by the meter it addresses and answered on the DTU's up topic in the same form:

- `A017` valve control (`55` open, `99` close): `84` reply, with ST when the vendor appends it;
- `A013` purchase with a one-byte sequence: booked only when the sequence is newer than the last one
  (1 to 127 steps on, counting on from 255 to 0), `84` reply;
- `901F` / `8105` read: `81` reply with the metering or purchase data.

Frames with the direction bit set (the collector's 84 acks to pushes) are ignored. The runner's command
faults (`mute`, `sleepy`, `drop_replies`; here also `lose_requests`, and `misreply`: the meter acts but
answers with another SER or another DI) and its `executed` list apply as for native JSON. A DTU built
with `downlink_encoding = "hex"` (or `"binary"`) only understands downlinks in that form; `downlinks`
lists the form of every downlink it received.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import paho.mqtt.client as mqtt

from drivers.base import DecodeError
from drivers.cjt188 import codec
from drivers.cjt188.driver import unhex
from drivers.cjt188.frame import ERROR, Frame, decimal_to_bcd, decode_frame, encode_frame
from drivers.cjt188.framer import RawFrame, StreamFramer
from drivers.cjt188.settings import Workarounds
from simulators.mqtt_fleet import Fleet, FleetRunner, VirtualMeter, cjt188_metering, cjt188_status

ERROR_STATUS = b"\x00\x01"  # ST of an error reply: the request was not understood


class Cjt188FleetRunner(FleetRunner):
    """A FleetRunner whose meters speak CJ/T 188 through DTUs (`Fleet(..., cjt188_push(prefix))`)."""

    def __init__(
        self,
        fleet: Fleet,
        host: str,
        port: int,
        prefix: str = "cjt188",
        append_status: bool = True,
        workarounds: Workarounds | None = None,
        clock_offset: timedelta = timedelta(hours=8),
        speed: float = 1.0,
        mqtt5: bool = True,
        downlink_encoding: str | None = None,
    ) -> None:
        self.append_status = append_status  # the vendor appends ST to its 84 valve reply
        self.downlink_encoding = downlink_encoding  # "hex" or "binary": the only form this DTU understands
        self.downlinks: list[str] = []  # "hex" or "binary", per downlink received
        self.misreply: dict[str, list[str]] = {}  # per meter, faults of its next replies: "other_ser", "other_di"
        self.workarounds = workarounds or Workarounds()
        self.clock_offset = clock_offset
        self.last_purchase: dict[str, Decimal] = {}
        self.answered = 0  # reply frames sent
        self.lose_requests: dict[str, int] = {}  # the DTU loses the next n frames to this meter
        self._by_address = {m.address: m for m in fleet.meters}
        super().__init__(fleet, host, port, speed=speed, mqtt5=mqtt5, prefix=prefix)

    def _on_downlink(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        data, as_hex = unhex(bytes(message.payload))
        self.downlinks.append("hex" if as_hex else "binary")
        if self.downlink_encoding is not None and self.downlink_encoding != self.downlinks[-1]:
            return  # a DTU that expects the other form takes this for garbage
        framer = StreamFramer()
        replies = b""
        for item in framer.feed(data) + framer.flush():
            if not isinstance(item, RawFrame):
                continue
            try:
                frame = decode_frame(item.data, self.workarounds.di_order)
            except DecodeError:
                continue
            meter = self._by_address.get(frame.address)
            if frame.from_meter or meter is None or not self._listening(meter.meter_no):
                continue
            if self.lose_requests.get(meter.meter_no, 0) > 0:
                self.lose_requests[meter.meter_no] -= 1
                continue
            with self._command_lock:
                reply = self._misreply(meter, self._answer(meter, frame))
                if self.drop_replies.get(meter.meter_no, 0) > 0:
                    self.drop_replies[meter.meter_no] -= 1
                    continue
            replies += encode_frame(reply, self.workarounds.di_order)
            self.answered += 1
        if replies:
            dtu = message.topic.split("/")[-2]
            client.publish(f"{self.prefix}/{dtu}/up", replies.hex(" ").upper().encode() if as_hex else replies, qos=1)

    def _listening(self, meter_no: str) -> bool:
        if meter_no in self.mute:
            return False
        return meter_no not in self.sleepy or self._awake_until.get(meter_no, 0.0) >= time.monotonic()

    def _answer(self, meter: VirtualMeter, frame: Frame) -> Frame:
        """Execute one request and return the reply frame (an error reply for what the meter cannot do)."""
        no, w = meter.meter_no, self.workarounds
        control = frame.control | 0x80
        if frame.di == codec.DI_VALVE and frame.control == w.valve_control and len(frame.payload) >= 1:
            code = frame.payload[0]
            if code in (w.valve_open_code, w.valve_close_code):
                meter.valve = "open" if code == w.valve_open_code else "closed"
                self.executed.append((no, "valve_open" if code == w.valve_open_code else "valve_close"))
                return _reply(frame, control, cjt188_status(meter) if self.append_status else b"")
        elif frame.di == codec.DI_PURCHASE_WRITE and frame.function == codec.FN_WRITE and len(frame.payload) >= 5:
            seq = frame.payload[0]
            amount = Decimal(int(frame.payload[1:5][::-1].hex())).scaleb(-2)
            if codec.purchase_sequence_is_newer(seq, meter.purchase_seq):  # a repeat is acknowledged, not counted
                meter.purchase_seq, meter.credit, meter.purchased = seq, meter.credit + amount, meter.purchased + amount
                self.last_purchase[no] = amount
                self.executed.append((no, "credit"))
            return _reply(frame, control, bytes([meter.purchase_seq]))
        elif frame.function == codec.FN_READ and frame.di == codec.DI_METERING:
            now = datetime.now(UTC).replace(microsecond=0) + meter.skew
            return _reply(frame, control, cjt188_metering(meter, now, meter.register, self.clock_offset))
        elif frame.function == codec.FN_READ and frame.di == codec.DI_PURCHASE_READ:
            payload = (
                bytes([meter.purchase_seq])
                + decimal_to_bcd(self.last_purchase.get(no, Decimal("0.00")), 4, 2)
                + decimal_to_bcd(meter.purchased, 4, 2)
                + decimal_to_bcd(meter.credit, 4, 2)
                + cjt188_status(meter)
            )
            return _reply(frame, control, payload)
        return _reply(frame, control | ERROR, ERROR_STATUS)

    def _misreply(self, meter: VirtualMeter, reply: Frame) -> Frame:
        """The reply as a confused meter sends it: another SER, or metering data (901F) instead."""
        faults = self.misreply.get(meter.meter_no)
        if not faults:
            return reply
        fault = faults.pop(0)
        if fault == "other_ser":
            return replace(reply, ser=(reply.ser + 1) & 0xFF)
        now = datetime.now(UTC).replace(microsecond=0) + meter.skew
        payload = cjt188_metering(meter, now, meter.register, self.clock_offset)
        return replace(reply, control=0x80 | codec.FN_READ, di=codec.DI_METERING, payload=payload)


def _reply(request: Frame, control: int, payload: bytes) -> Frame:
    return Frame(request.meter_type, request.address, control, request.di, request.ser, payload)
