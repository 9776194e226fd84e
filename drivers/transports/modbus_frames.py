"""Modbus frames without I/O: request PDUs, answers checked against their request, MBAP and RTU framing.

The link (drivers/transports/modbus.py) moves bytes; everything here is pure so that the framers can
be tested byte by byte.

RTU has no length field and no transaction id: an answer is recognised by what the request lets us
expect — the unit id, the function code (or its exception form), for reads the byte count — and its
CRC. `RtuFramer` resynchronises: a candidate whose CRC fails costs one byte, not the buffer, so junk
that happens to look like the start of a frame (the unit id and function code of the answer) cannot
swallow the good frame behind it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

READ_CODES = (1, 2, 3, 4)
WRITE_CODES = (5, 6, 16)
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MBAP_HEADER = struct.Struct(">HHHB")  # transaction id, protocol id (0), length (unit + PDU), unit id
READ_REQUEST = struct.Struct(">BHH")  # function code, address, count (or a single write's value)
MAX_PDU = 253


class FrameMismatch(ValueError):
    """An answer that does not fit its request (wrong function, byte count or echo)."""


class ExceptionAnswer(Exception):
    """The device answered with a Modbus exception response (function code | 0x80, exception code)."""

    def __init__(self, function_code: int, exception_code: int) -> None:
        super().__init__(f"function {function_code:02X}: exception code {exception_code:02X}")
        self.function_code = function_code
        self.exception_code = exception_code


# --- PDUs ---------------------------------------------------------------------------------------


def read_pdu(function_code: int, address: int, count: int) -> bytes:
    """A read request (01 coils, 02 discrete inputs, 03 holding, 04 input registers); ValueError when out of range."""
    if function_code not in READ_CODES:
        raise ValueError(f"not a read function code: {function_code}")
    limit = MAX_READ_BITS if function_code in (1, 2) else MAX_READ_REGISTERS
    if not 1 <= count <= limit or not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError(f"cannot read {count} from address {address} with function {function_code:02X}")
    return READ_REQUEST.pack(function_code, address, count)


def write_pdu(function_code: int, address: int, values: list[int] | tuple[int, ...]) -> bytes:
    """05 (one coil: any true value is on), 06 (one register) or 16 (registers)."""
    if not 0 <= address <= 0xFFFF or not values:
        raise ValueError(f"cannot write {values!r} at address {address}")
    if function_code == 5:
        return READ_REQUEST.pack(5, address, 0xFF00 if values[0] else 0)
    if function_code == 6:
        return READ_REQUEST.pack(6, address, values[0])
    if function_code == 16:
        if len(values) > MAX_WRITE_REGISTERS or address + len(values) > 0x10000:
            raise ValueError(f"cannot write {len(values)} registers at address {address}")
        return struct.pack(f">BHHB{len(values)}H", 16, address, len(values), 2 * len(values), *values)
    raise ValueError(f"not a write function code: {function_code}")


def answer_length(request: bytes, words: int | None = None) -> int:
    """The length of the normal answer's PDU (function code and data) to a request PDU.

    `words`: the 16-bit words a register read answers with, when not one per register (32-bit-wide
    Enron/Daniel registers answer with two each).
    """
    function_code = request[0]
    if function_code in (3, 4):
        return 2 + 2 * (request[3] << 8 | request[4] if words is None else words)
    if function_code in (1, 2):
        return 2 + ((request[3] << 8 | request[4]) + 7) // 8
    return 5  # writes answer with an echo of function code, address and value or count


def parse_answer(request: bytes, answer: bytes, length: int) -> list[int] | list[bool] | None:
    """The values of a read answer (words or bits), None for a write's echo; `length` from `answer_length`.

    ExceptionAnswer for an exception response, FrameMismatch for an answer that does not fit the request.
    """
    function_code = request[0]
    if not answer:
        raise FrameMismatch("empty answer")
    if answer[0] == function_code | 0x80 and len(answer) == 2:
        raise ExceptionAnswer(function_code, answer[1])
    if answer[0] != function_code:
        raise FrameMismatch(f"answer with function {answer[0]:02X} to a request with {function_code:02X}")
    if len(answer) != length:
        raise FrameMismatch(f"answer of {len(answer)} bytes, expected {length}")
    if function_code in (3, 4):
        if answer[1] != len(answer) - 2:
            raise FrameMismatch(f"byte count {answer[1]} in an answer with {len(answer) - 2} data bytes")
        return list(struct.unpack_from(f">{(len(answer) - 2) // 2}H", answer, 2))
    if function_code in (1, 2):
        if answer[1] != len(answer) - 2:
            raise FrameMismatch(f"byte count {answer[1]} in an answer with {len(answer) - 2} data bytes")
        count = request[3] << 8 | request[4]
        bits = int.from_bytes(answer[2:], "little")
        return [bool(bits >> i & 1) for i in range(count)]
    if answer != request[:5]:
        raise FrameMismatch(f"write answered with {answer.hex(' ')}, not the echo of {request[:5].hex(' ')}")
    return None


# --- CRC ----------------------------------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> bytes:
    """The Modbus RTU CRC of `data`, as it goes on the wire (low byte first)."""
    crc = 0xFFFF
    table = CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return bytes((crc & 0xFF, crc >> 8))


def rtu_adu(unit: int, pdu: bytes) -> bytes:
    """Unit id, PDU and CRC: a complete RTU frame."""
    frame = bytes((unit,)) + pdu
    return frame + crc16(frame)


# --- MBAP (Modbus TCP) --------------------------------------------------------------------------


def mbap_adu(transaction_id: int, unit: int, pdu: bytes) -> bytes:
    return MBAP_HEADER.pack(transaction_id, 0, len(pdu) + 1, unit) + pdu


def split_mbap(buffer: bytearray) -> list[bytes]:
    """Take the complete MBAP frames off the front of `buffer` (in place); what is left is incomplete.

    FrameMismatch when the header cannot be a Modbus TCP header: the stream has lost its framing.
    """
    frames = []
    while len(buffer) >= 7:
        _, protocol, length, _ = MBAP_HEADER.unpack_from(buffer)
        if protocol != 0 or not 2 <= length <= MAX_PDU + 1:
            raise FrameMismatch(f"not a Modbus TCP header: {bytes(buffer[:7]).hex(' ')}")
        end = 6 + length
        if len(buffer) < end:
            break
        frames.append(bytes(buffer[:end]))
        del buffer[:end]
    return frames


# --- RTU ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtuMatch:
    frame: bytes  # unit id, PDU, CRC
    skipped: bytes  # what came before it on the line (not counting an echo of our own request)


class RtuFramer:
    """Finds the answer to the pending request in the bytes read from an RTU line.

    Scanning from the oldest byte, a position is a candidate when it holds the request's unit id and
    function code (or the exception form), and for a read the byte count the request implies. The first
    complete candidate whose CRC matches is the answer. One whose CRC fails is stepped over by one byte
    and the scan goes on; so is one that is still incomplete, in case it is junk with a complete answer
    behind it (the incomplete one is waited for otherwise). A read request echoed by the line (some
    RS-485 adapters do) is stepped over whole.
    """

    MAX_BUFFER = 4096

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.request = b""  # the pending request as sent (unit id, PDU, CRC); empty when none is
        self.crc_failed = False  # a complete candidate failed its CRC since the request went out
        self.waiting_at: int | None = None  # the position of an incomplete candidate, after a scan
        self._unit = self._function = self._byte_count = -1
        self._length = 0

    def expect(self, request: bytes, length: int) -> bytes:
        """A request (unit id, PDU, CRC) whose answer PDU has `length` bytes is going out: return (and forget)
        what arrived since the last one."""
        stale = bytes(self.buffer)
        self.buffer.clear()
        self.request = request
        self.crc_failed = False
        self.waiting_at = None
        self._unit, self._function = request[0], request[1]
        self._length = 1 + length + 2
        self._byte_count = self._length - 5 if self._function in READ_CODES else -1
        return stale

    def give_up(self) -> bytes:
        """The request is over without an answer: return and forget what is in the buffer."""
        left = bytes(self.buffer)
        self.buffer.clear()
        self.finish()
        return left

    def finish(self) -> None:
        """The request is over; bytes that arrived after its answer stay for `expect` to return."""
        self.request = b""
        self.waiting_at = None

    def feed(self, data: bytes) -> RtuMatch | None:
        buffer = self.buffer
        buffer += data
        if not self.request:
            if len(buffer) > self.MAX_BUFFER:  # noise while nothing is pending: keep only the newest bytes
                del buffer[: len(buffer) - self.MAX_BUFFER]
            return None
        return self._scan()

    def _scan(self) -> RtuMatch | None:
        buffer, request = self.buffer, self.request
        unit, function, byte_count = self._unit, self._function, self._byte_count
        size = len(buffer)
        echoes: list[tuple[int, int]] = []
        self.waiting_at = None
        i = 0
        while i < size - 1:
            if buffer[i] != unit:
                i += 1
                continue
            code = buffer[i + 1]
            if code == function:
                if byte_count >= 0 and (i + 2 >= size or buffer[i + 2] != byte_count):
                    if self._echo_at(i):
                        echoes.append((i, i + len(request)))
                        i += len(request)
                    else:
                        if (i + 2 >= size or request.startswith(buffer[i:])) and self.waiting_at is None:
                            self.waiting_at = i
                        i += 1
                    continue
                length = self._length
            elif code == function | 0x80:
                length = 5
            else:
                i += 1
                continue
            end = i + length
            if end > size:  # incomplete: the answer, or junk with a complete answer behind it
                if self.waiting_at is None:
                    self.waiting_at = i
                i += 1
                continue
            if crc16(buffer[i : end - 2]) == buffer[end - 2 : end]:
                skipped = bytearray(buffer[:i])
                for start, stop in reversed(echoes):
                    del skipped[start:stop]
                frame = bytes(buffer[i:end])
                del buffer[:end]
                return RtuMatch(frame, bytes(skipped))
            if self._echo_at(i):
                echoes.append((i, i + len(request)))
                i += len(request)
                continue
            self.crc_failed = True
            i += 1
        if len(buffer) > self.MAX_BUFFER:
            del buffer[: len(buffer) - self.MAX_BUFFER]
            self.waiting_at = None
        return None

    def _echo_at(self, i: int) -> bool:
        """Our own read request, echoed by the line (a write's answer is its echo, so only reads can tell)."""
        request = self.request
        return self._byte_count >= 0 and self.buffer[i : i + len(request)] == request
