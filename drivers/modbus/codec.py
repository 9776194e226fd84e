"""Pure Modbus codec over a device profile: plan reads, decode read results, encode valve writes.

Nothing here performs I/O. The poller asks `plan_reads` what to read, reads each block with the
block's function code, and passes the raw register words (or bits) to `decode_blocks`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from drivers.base import (
    Command,
    CommandKind,
    Decoded,
    DecodeError,
    EventKind,
    MeterEvent,
    MeterStatus,
    Reading,
    UnsupportedCommand,
    ValveState,
)
from drivers.modbus.profile import Encoding, Function, Location, Order, Point, Profile, ValueType
from drivers.modbus.registers import EXACT, decode_words, encode_words

BATTERY_CHANNEL = "battery_v"  # also reported as MeterStatus.battery_v
MAX_SCALE_EXPONENT = 30


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: `count` addresses from `address` with the function's read code."""

    function: Function
    address: int
    count: int
    register_width: int = 16

    @property
    def function_code(self) -> int:
        return self.function.read_code

    @property
    def words(self) -> int:
        """How many values the response carries: bits, or 16-bit words."""
        if self.function.is_bit:
            return self.count
        return self.count * self.register_width // 16


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One write request: function code 05 (coil), 06 (register) or 16 (registers)."""

    function_code: int
    address: int
    values: tuple[int, ...]

    def pdu(self) -> bytes:
        """The Modbus request PDU (function code and data, without unit id or checksum)."""
        head = bytes([self.function_code]) + self.address.to_bytes(2, "big")
        if self.function_code == 5:
            return head + (b"\xff\x00" if self.values[0] else b"\x00\x00")
        if self.function_code == 6:
            return head + self.values[0].to_bytes(2, "big")
        body = b"".join(v.to_bytes(2, "big") for v in self.values)
        return head + len(self.values).to_bytes(2, "big") + bytes([len(body)]) + body


RegisterImage = dict[Function, dict[int, int]]
"""Register contents by function and address. A 32-bit-wide register holds (first word << 16) | second word."""


def _locations(profile: Profile) -> list[Location]:
    found = [point.at for point in profile.points]
    found += [alarm.at for alarm in profile.alarms]
    if profile.valve is not None and profile.valve.readback is not None:
        found.append(profile.valve.readback.at)
    return found


def plan_reads(profile: Profile, max_gap: int | None = None) -> list[ReadBlock]:
    """The fewest reads that cover every value of the profile.

    Values of the same function (and register width) merge into one block when the unused addresses
    between them are at most `max_gap` and the block stays within the Modbus limit (125 registers,
    62 32-bit registers, 2000 bits) or the profile's lower one. Taking each block as far as it can go
    is optimal here, because any sub-run of a feasible run is feasible.
    """
    gap = profile.max_gap if max_gap is None else max_gap
    groups: dict[tuple[Function, int], list[tuple[int, int]]] = {}
    for location in _locations(profile):
        key = (location.function, 16 if location.function.is_bit else location.register_width)
        groups.setdefault(key, []).append((location.address, location.address + location.span))
    blocks: list[ReadBlock] = []
    for (function, width), spans in sorted(groups.items(), key=lambda item: (item[0][0].read_code, item[0][1])):
        limit = profile.max_bits if function.is_bit else profile.max_registers * 16 // width
        start, end = -1, -1
        for span_start, span_end in sorted(spans):
            if start >= 0 and span_start - end <= gap and max(end, span_end) - start <= limit:
                end = max(end, span_end)
                continue
            if start >= 0:
                blocks.append(ReadBlock(function, start, end - start, width))
            start, end = span_start, span_end
        if start >= 0:
            blocks.append(ReadBlock(function, start, end - start, width))
    return blocks


# --- decoding ----------------------------------------------------------------------------------


class _Image:
    """Words received in this poll, by (function, register width, address)."""

    def __init__(self) -> None:
        self.words: dict[tuple[Function, int, int], tuple[int, ...]] = {}

    def add(self, block: ReadBlock, data: Sequence[int] | Sequence[bool]) -> None:
        if not isinstance(block, ReadBlock):
            raise DecodeError("bad_block", "block must be a ReadBlock")
        if len(data) != block.words:
            raise DecodeError("bad_response", f"expected {block.words} values for {block}, got {len(data)}")
        per_address = 1 if block.function.is_bit else block.register_width // 16
        for value in data:
            if isinstance(value, bool) and not block.function.is_bit:
                raise DecodeError("bad_response", "register values must be integers, got a bool")
            if not isinstance(value, int) or not 0 <= value <= (1 if block.function.is_bit else 65535):
                raise DecodeError("bad_response", f"value {value!r} is out of range for {block.function.value}")
        for offset in range(block.count):
            chunk = tuple(int(v) for v in data[offset * per_address : (offset + 1) * per_address])
            width = 16 if block.function.is_bit else block.register_width
            self.words[(block.function, width, block.address + offset)] = chunk

    def get(self, location: Location) -> list[int] | None:
        width = 16 if location.function.is_bit else location.register_width
        found: list[int] = []
        for address in range(location.address, location.address + location.span):
            chunk = self.words.get((location.function, width, address))
            if chunk is None:
                return None
            found.extend(chunk)
        return found


def _scaled(point: Point, raw: Decimal, values: Mapping[str, Decimal]) -> Decimal:
    value = EXACT.multiply(raw, point.scale)
    if point.scale_register is None:
        return value
    factor = values.get(point.scale_register)
    if factor is None:
        raise DecodeError(
            "missing_scale_register",
            f"{point.channel} needs {point.scale_register}; decode its block together with this one",
        )
    if point.scale_register_kind == "multiplier":
        return EXACT.multiply(value, factor)
    if abs(factor) > MAX_SCALE_EXPONENT:
        raise DecodeError("bad_scale", f"{point.scale_register} = {factor} is not a plausible power of ten")
    return value.scaleb(int(factor), EXACT)


def decode_blocks(
    profile: Profile,
    responses: Iterable[tuple[ReadBlock, Sequence[int] | Sequence[bool]]],
    meter_no: str,
    ts: datetime,
) -> Decoded:
    """Decode the read results of one poll: readings, events from alarm bits, and valve status.

    Values not covered by the given blocks are left out; a value whose scale register was not read
    in the same poll is an error.
    """
    image = _Image()
    for block, data in responses:
        image.add(block, data)
    raw: dict[str, Decimal] = {}
    for point in profile.points:
        words = image.get(point.at)
        if words is not None:
            raw[point.channel] = decode_words(point.at.encoding, words)
    decoded = Decoded()
    battery: Decimal | None = None
    for point in profile.points:
        if point.channel not in raw or not point.publish:
            continue
        value = _scaled(point, raw[point.channel], raw)
        decoded.readings.append(Reading(meter_no, point.channel, ts, value))
        if point.channel == BATTERY_CHANNEL:
            battery = value
    for alarm in profile.alarms:
        words = image.get(alarm.at)
        if words is None:
            continue
        for bit in _set_bits(alarm.at, words):
            kind = alarm.bits.get(bit, alarm.other_bits)
            if kind is not None:
                detail = {"source": alarm.name, "address": alarm.at.address, "bit": bit}
                decoded.events.append(MeterEvent(meter_no, kind, ts, detail))
    valve: ValveState | None = None
    if profile.valve is not None and profile.valve.readback is not None:
        readback = profile.valve.readback
        words = image.get(readback.at)
        if words is not None:
            state_value = int(decode_words(readback.at.encoding, words))
            valve = readback.states.get(state_value, ValveState.UNKNOWN)
    if valve is not None or battery is not None:
        decoded.statuses.append(MeterStatus(meter_no, ts, valve=valve, battery_v=battery))
    return decoded


_Slice = tuple[int, int, int]  # block index, first and end offset of a location's values in that block's data


class BlockDecoder:
    """`decode_blocks` for one profile and its fixed read plan, with every lookup done once.

    A poller decodes the same blocks thousands of times a second: here each value's position in the
    read results is computed up front, and the common register types (big-endian integers) are
    decoded without going through bytes. The result is the same `Decoded` as `decode_blocks`; data that
    does not fit the blocks is handed to `decode_blocks`, which names the error.
    """

    def __init__(self, profile: Profile, blocks: Sequence[ReadBlock]) -> None:
        self.profile = profile
        self.blocks = tuple(blocks)
        self._points: list[tuple[Point, _Slice, _Fast | None]] = []
        for point in profile.points:
            where = self._find(point.at)
            if where is not None:
                self._points.append((point, where, _fast_decoder(point.at.encoding)))
        self._alarms = [
            (alarm, where, None if alarm.at.function.is_bit else _fast_integer(alarm.at.encoding))
            for alarm in profile.alarms
            if (where := self._find(alarm.at)) is not None
        ]
        self._valve: tuple[Location, _Slice, Mapping[int, ValveState], _FastInt | None] | None = None
        if profile.valve is not None and profile.valve.readback is not None:
            readback = profile.valve.readback
            where = self._find(readback.at)
            if where is not None:
                fast_int = None if readback.at.function.is_bit else _fast_integer(readback.at.encoding)
                self._valve = (readback.at, where, readback.states, fast_int)
        self._checks = [(block.words, block.function.is_bit) for block in self.blocks]
        self._heads = [struct.pack(">BHH", b.function_code, b.address, b.count) for b in self.blocks]

    def _find(self, location: Location) -> _Slice | None:
        width = 16 if location.function.is_bit else location.register_width
        for index, block in enumerate(self.blocks):
            block_width = 16 if block.function.is_bit else block.register_width
            if block.function is not location.function or block_width != width:
                continue
            if block.address <= location.address and location.address + location.span <= block.address + block.count:
                per_address = 1 if block.function.is_bit else block.register_width // 16
                start = (location.address - block.address) * per_address
                return index, start, start + location.span * per_address
        return None

    def decode(self, datas: Sequence[Sequence[int] | Sequence[bool]], meter_no: str, ts: datetime) -> Decoded:
        """Decode the read results of one poll, one per block in plan order (see decode_blocks)."""
        if not self._fits(datas):
            return decode_blocks(self.profile, zip(self.blocks, datas, strict=False), meter_no, ts)
        raw: dict[str, Decimal] = {}
        for point, (index, start, end), fast in self._points:
            words = datas[index][start:end]
            raw[point.channel] = fast(words) if fast is not None else decode_words(point.at.encoding, words)
        decoded = Decoded()
        readings = decoded.readings
        battery: Decimal | None = None
        for point, _, _ in self._points:
            if not point.publish:
                continue
            value = _scaled(point, raw[point.channel], raw)
            readings.append(Reading(meter_no, point.channel, ts, value))
            if point.channel == BATTERY_CHANNEL:
                battery = value
        for alarm, (index, start, end), fast_int in self._alarms:
            words = datas[index][start:end]
            if fast_int is not None:
                held = fast_int(words)
                bits = [bit for bit in range(16 * alarm.at.encoding.words) if held >> bit & 1] if held else []
            else:
                bits = _set_bits(alarm.at, words)
            for bit in bits:
                kind = alarm.bits.get(bit, alarm.other_bits)
                if kind is not None:
                    detail = {"source": alarm.name, "address": alarm.at.address, "bit": bit}
                    decoded.events.append(MeterEvent(meter_no, kind, ts, detail))
        valve: ValveState | None = None
        if self._valve is not None:
            at, (index, start, end), states, fast_int = self._valve
            words = datas[index][start:end]
            state_value = fast_int(words) if fast_int is not None else int(decode_words(at.encoding, words))
            valve = states.get(state_value, ValveState.UNKNOWN)
        if valve is not None or battery is not None:
            decoded.statuses.append(MeterStatus(meter_no, ts, valve=valve, battery_v=battery))
        return decoded

    def raw(self, datas: Sequence[Sequence[int] | Sequence[bool]]) -> bytes:
        """The read results as bytes, for a dead letter: per block its function code, address and count,
        then the words as on the wire (big-endian) or the bits one per byte."""
        parts = []
        for head, (_, is_bit), data in zip(self._heads, self._checks, datas, strict=False):
            body = bytes(map(bool, data)) if is_bit else struct.pack(f">{len(data)}H", *data)
            parts.append(head + body)
        return b"".join(parts)

    def _fits(self, datas: Sequence[Sequence[int] | Sequence[bool]]) -> bool:
        """One result per block, each as long as its block, registers ints 0..65535 and bits 0/1 or bools."""
        if len(datas) != len(self.blocks):
            return False
        for (words, is_bit), data in zip(self._checks, datas, strict=True):
            if len(data) != words:
                return False
            if not data:
                continue
            if is_bit:
                if not set(map(type, data)) <= {bool, int} or min(data) < 0 or max(data) > 1:
                    return False
            elif set(map(type, data)) != {int} or min(data) < 0 or max(data) > 65535:
                return False
        return True


_Fast = Callable[[Sequence[int] | Sequence[bool]], Decimal]
_FastInt = Callable[[Sequence[int] | Sequence[bool]], int]


def _fast_integer(encoding: Encoding) -> _FastInt | None:
    """The value of big-endian 16- and 32-bit integer registers without going through bytes; None for the rest."""
    if encoding.word_order is not Order.BIG or encoding.byte_order is not Order.BIG:
        return None
    kind = encoding.type
    if kind is ValueType.UINT16:
        return lambda words: int(words[0])
    if kind is ValueType.INT16:
        return lambda words: int(words[0]) - (0x10000 if words[0] & 0x8000 else 0)
    if kind is ValueType.UINT32:
        return lambda words: int(words[0]) << 16 | int(words[1])
    if kind is ValueType.INT32:
        return lambda words: (int(words[0]) << 16 | int(words[1])) - (1 << 32 if words[0] & 0x8000 else 0)
    return None


def _fast_decoder(encoding: Encoding) -> _Fast | None:
    """What decode_words gives for the common big-endian integer registers, without going through bytes."""
    fast_int = _fast_integer(encoding)
    if fast_int is None:
        return None
    return lambda words: Decimal(fast_int(words))


def decode_block(
    profile: Profile, block: ReadBlock, data: Sequence[int] | Sequence[bool], meter_no: str, ts: datetime
) -> Decoded:
    """Decode one read result on its own (see decode_blocks)."""
    return decode_blocks(profile, [(block, data)], meter_no, ts)


def _set_bits(location: Location, words: Sequence[int]) -> list[int]:
    if location.function.is_bit:
        return [index for index, bit in enumerate(words) if bit]
    value = int(decode_words(location.encoding, words))
    return [bit for bit in range(16 * location.encoding.words) if value >> bit & 1]


# --- encoding ----------------------------------------------------------------------------------

_VALVE_COMMANDS = {CommandKind.VALVE_OPEN: "open", CommandKind.VALVE_CLOSE: "close", CommandKind.VALVE_ARM: "arm"}


def encode_valve(profile: Profile, command: Command | CommandKind) -> WriteRequest:
    """The write that drives the valve; UnsupportedCommand when the profile cannot do it."""
    kind = command.kind if isinstance(command, Command) else command
    if profile.valve is None:
        raise UnsupportedCommand(f"profile {profile.name} has no [valve] section")
    action = _VALVE_COMMANDS.get(kind)
    value = getattr(profile.valve.write, action) if action else None
    if value is None:
        raise UnsupportedCommand(f"profile {profile.name} cannot {kind.value}")
    write = profile.valve.write
    if write.function is Function.COIL:
        return WriteRequest(5, write.address, (value,))
    return WriteRequest(16 if profile.write_multiple else 6, write.address, (value,))


def _store(image: RegisterImage, location: Location, words: Sequence[int]) -> None:
    table = image.setdefault(location.function, {})
    if location.function.is_bit or location.register_width == 16:
        for offset, word in enumerate(words):
            table[location.address + offset] = word
        return
    for offset in range(location.span):
        table[location.address + offset] = words[2 * offset] << 16 | words[2 * offset + 1]


def encode_values(
    profile: Profile,
    values: Mapping[str, Decimal | int],
    *,
    valve: ValveState | None = None,
    alarms: Iterable[EventKind] = (),
) -> RegisterImage:
    """The register image a device holds for the given channel values (the inverse of decode_blocks).

    Helper points such as a counter-resolution exponent are given by channel like any other.
    Raises ValueError for a value the register type cannot hold.
    """
    image: RegisterImage = {}
    for point in profile.points:
        if point.channel not in values:
            continue
        value = Decimal(values[point.channel])
        divisor = point.scale
        if point.scale_register is not None:
            factor = Decimal(values[point.scale_register])
            divisor = EXACT.multiply(
                divisor, factor if point.scale_register_kind == "multiplier" else Decimal(1).scaleb(int(factor))
            )
        try:
            words = encode_words(point.at.encoding, EXACT.divide(value, divisor))
        except ValueError as exc:
            raise ValueError(f"{point.channel}: {exc}") from None
        _store(image, point.at, words)
    if valve is not None:
        if profile.valve is None or profile.valve.readback is None:
            raise ValueError(f"profile {profile.name} does not read back a valve state")
        readback = profile.valve.readback
        matches = [number for number, state in readback.states.items() if state is valve]
        if not matches:
            raise ValueError(f"profile {profile.name} has no value for valve state {valve.value}")
        _store(image, readback.at, encode_words(readback.at.encoding, Decimal(matches[0])))
    for kind in alarms:
        _set_alarm(profile, image, kind)
    return image


def _set_alarm(profile: Profile, image: RegisterImage, kind: EventKind) -> None:
    for alarm in profile.alarms:
        bit = next((b for b, k in sorted(alarm.bits.items()) if k is kind), None)
        if bit is None:
            continue
        table = image.setdefault(alarm.at.function, {})
        if alarm.at.function.is_bit:
            table[alarm.at.address + bit] = 1
            return
        current = [table.get(alarm.at.address + i, 0) for i in range(alarm.at.span)]
        value = int(decode_words(alarm.at.encoding, current)) | 1 << bit
        _store(image, alarm.at, encode_words(alarm.at.encoding, Decimal(value)))
        return
    raise ValueError(f"profile {profile.name} has no alarm bit for {kind.value}")


def block_data(image: RegisterImage, block: ReadBlock) -> list[int]:
    """The values a device answers for `block`, from a register image (unset addresses read as 0)."""
    table = image.get(block.function, {})
    if block.function.is_bit or block.register_width == 16:
        return [table.get(address, 0) for address in range(block.address, block.address + block.count)]
    words: list[int] = []
    for address in range(block.address, block.address + block.count):
        value = table.get(address, 0)
        words += [value >> 16, value & 0xFFFF]
    return words
