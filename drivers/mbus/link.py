"""M-Bus link layer (EN 13757-2): frames, request encoders and a stream framer.

Frames: single character `E5`; short frame `10 C A CS 16`; control frame (long frame with L = 3, no
data) and long frame `68 L L 68 C A CI data CS 16`, where CS is the sum of C, A, CI and data mod 256.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.base import DecodeError

ACK = 0xE5
START_SHORT = 0x10
START_LONG = 0x68
STOP = 0x16

C_SND_NKE = 0x40
C_SND_UD = 0x53
C_REQ_UD2 = 0x5B
C_RSP_UD = 0x08
FCB = 0x20  # frame count bit in a master's control byte

ADDRESS_SECONDARY = 0xFD  # "the selected slave" (network layer address)
ADDRESS_BROADCAST = 0xFF  # every slave, none replies
MAX_PRIMARY_ADDRESS = 250
CI_SELECT_SECONDARY = 0x52


@dataclass(frozen=True, slots=True)
class Ack:
    def to_bytes(self) -> bytes:
        return bytes([ACK])


@dataclass(frozen=True, slots=True)
class ShortFrame:
    control: int
    address: int

    def to_bytes(self) -> bytes:
        return encode_short(self.control, self.address)


@dataclass(frozen=True, slots=True)
class LongFrame:
    """A long frame; with no data it is a control frame (L = 3)."""

    control: int
    address: int
    ci: int
    data: bytes = b""

    @property
    def is_control_frame(self) -> bool:
        return not self.data

    def to_bytes(self) -> bytes:
        return encode_long(self.control, self.address, self.ci, self.data)


Frame = Ack | ShortFrame | LongFrame


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def _byte(value: int, name: str) -> int:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must be a byte, got {value}")
    return value


def encode_short(control: int, address: int) -> bytes:
    body = bytes([_byte(control, "control"), _byte(address, "address")])
    return bytes([START_SHORT]) + body + bytes([checksum(body), STOP])


def encode_long(control: int, address: int, ci: int, data: bytes = b"") -> bytes:
    if len(data) > 252:
        raise ValueError(f"a long frame carries at most 252 data bytes, got {len(data)}")
    body = bytes([_byte(control, "control"), _byte(address, "address"), _byte(ci, "ci")]) + data
    length = len(body)
    return bytes([START_LONG, length, length, START_LONG]) + body + bytes([checksum(body), STOP])


def _primary(address: int) -> int:
    if not (0 <= address <= MAX_PRIMARY_ADDRESS or address in (ADDRESS_SECONDARY, 0xFE, ADDRESS_BROADCAST)):
        raise ValueError(f"primary address must be 0–250, 253, 254 or 255, got {address}")
    return address


def snd_nke(address: int) -> bytes:
    """Reset (initialise) a slave; it answers E5. The next REQ_UD2 must set FCB."""
    return encode_short(C_SND_NKE, _primary(address))


def req_ud2(address: int, fcb: bool = False) -> bytes:
    """Ask a slave for its data (class 2). Toggle `fcb` for each new request (see FcbState)."""
    return encode_short(C_REQ_UD2 | (FCB if fcb else 0), _primary(address))


def encode_manufacturer(code: str) -> int:
    """Three letters A–Z as the 15-bit M-Bus manufacturer number (e.g. 'KAM' → 0x2C2D)."""
    if len(code) != 3 or not all("A" <= c <= "Z" for c in code.upper()):
        raise ValueError(f"manufacturer must be three letters, got {code!r}")
    a, b, c = (ord(ch) - 64 for ch in code.upper())
    return a << 10 | b << 5 | c


def decode_manufacturer(number: int) -> str:
    letters = (number >> 10 & 0x1F, number >> 5 & 0x1F, number & 0x1F)
    return "".join(chr(64 + n) if 1 <= n <= 26 else "?" for n in letters)


def select_secondary(
    identification: str, manufacturer: str | None = None, version: int | None = None, medium: int | None = None
) -> bytes:
    """SND_UD to address FD that selects the slave with this secondary address.

    `identification` is 8 digits, any of which may be the wildcard F; None for the other fields is a
    wildcard too (FF FF, FF, FF). The selected slave answers E5 and then answers requests sent to FD.
    """
    digits = identification.upper()
    if len(digits) != 8 or any(ch not in "0123456789F" for ch in digits):
        raise ValueError(f"identification must be 8 digits (F for a wildcard), got {identification!r}")
    data = bytes.fromhex(digits)[::-1]
    data += (0xFFFF if manufacturer is None else encode_manufacturer(manufacturer)).to_bytes(2, "little")
    data += bytes([0xFF if version is None else _byte(version, "version")])
    data += bytes([0xFF if medium is None else _byte(medium, "medium")])
    return encode_long(C_SND_UD, ADDRESS_SECONDARY, CI_SELECT_SECONDARY, data)


@dataclass
class FcbState:
    """The frame count bit per slave: set on the first REQ_UD2 after SND_NKE, toggled on each next one.

    A slave that sees the same FCB twice repeats its last answer; that is how a lost reply is re-read.
    Call `next_req_ud2` for a new request and `repeat_req_ud2` to ask for the last answer again.
    """

    fcb: dict[int, bool] = field(default_factory=dict)

    def reset(self, address: int) -> bytes:
        self.fcb.pop(address, None)
        return snd_nke(address)

    def next_req_ud2(self, address: int) -> bytes:
        bit = not self.fcb.get(address, False)
        self.fcb[address] = bit
        return req_ud2(address, bit)

    def repeat_req_ud2(self, address: int) -> bytes:
        return req_ud2(address, self.fcb.get(address, True))


def parse_frame(raw: bytes) -> Frame:
    """Exactly one frame; DecodeError for anything else."""
    if not raw:
        raise DecodeError("empty", "no bytes")
    start = raw[0]
    if start == ACK:
        if len(raw) != 1:
            raise DecodeError("trailing_bytes", f"{len(raw) - 1} bytes after a single-character ack")
        return Ack()
    if start == START_SHORT:
        if len(raw) != 5:
            raise DecodeError("bad_length", f"a short frame has 5 bytes, got {len(raw)}")
        if raw[4] != STOP:
            raise DecodeError("bad_stop", f"short frame ends with {raw[4]:02X}, not 16")
        if checksum(raw[1:3]) != raw[3]:
            raise DecodeError("bad_checksum", f"checksum {raw[3]:02X}, computed {checksum(raw[1:3]):02X}")
        return ShortFrame(raw[1], raw[2])
    if start == START_LONG:
        if len(raw) < 9:
            raise DecodeError("bad_length", f"a long frame has at least 9 bytes, got {len(raw)}")
        length = raw[1]
        if raw[2] != length or raw[3] != START_LONG:
            raise DecodeError("bad_header", f"long frame header {raw[:4].hex(' ').upper()} is not 68 L L 68")
        if length < 3:
            raise DecodeError("bad_length", f"L = {length} is shorter than C, A and CI")
        if len(raw) != length + 6:
            raise DecodeError("bad_length", f"L = {length} needs {length + 6} bytes, got {len(raw)}")
        if raw[-1] != STOP:
            raise DecodeError("bad_stop", f"long frame ends with {raw[-1]:02X}, not 16")
        body = raw[4 : 4 + length]
        if checksum(body) != raw[-2]:
            raise DecodeError("bad_checksum", f"checksum {raw[-2]:02X}, computed {checksum(body):02X}")
        return LongFrame(body[0], body[1], body[2], bytes(body[3:]))
    raise DecodeError("bad_start", f"a frame starts with E5, 10 or 68, not {start:02X}")


@dataclass(frozen=True, slots=True)
class Rejected:
    """Bytes the framer skipped, and why (the first reason of a run of skipped bytes)."""

    raw: bytes
    reason: str
    message: str


class StreamFramer:
    """Cuts frames out of a byte stream.

    Leading garbage is skipped, a bad frame is dropped one byte at a time so that a good frame inside
    or after it is still found, and frames split across reads are reassembled. Every skipped byte is
    reported once in `take_rejected()`. A stray E5 byte in line noise reads as an ack; that ambiguity
    is the protocol's. Call `idle()` when the line has been quiet for a frame timeout: a header that
    announced more bytes than ever came is then given up.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._skipped = bytearray()
        self._skip_reason: tuple[str, str] | None = None
        self._rejected: list[Rejected] = []

    @property
    def pending(self) -> bytes:
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer.extend(data)
        return self._drain()

    def idle(self) -> list[Frame]:
        frames: list[Frame] = []
        while self._buffer:
            self._skip(1, "incomplete", "the line went quiet before the frame was complete")
            frames += self._drain()
        self._close_skip()
        return frames

    def take_rejected(self) -> list[Rejected]:
        self._close_skip()
        found, self._rejected = self._rejected, []
        return found

    def _skip(self, count: int, reason: str, message: str) -> None:
        self._skipped.extend(self._buffer[:count])
        del self._buffer[:count]
        if self._skip_reason is None or self._skip_reason[0] == "garbage":
            self._skip_reason = (reason, message)

    def _close_skip(self) -> None:
        if self._skipped:
            reason, message = self._skip_reason or ("garbage", "")
            self._rejected.append(Rejected(bytes(self._skipped), reason, message))
        self._skipped.clear()
        self._skip_reason = None

    def _drain(self) -> list[Frame]:
        frames: list[Frame] = []
        buffer = self._buffer
        while buffer:
            start = buffer[0]
            if start not in (ACK, START_SHORT, START_LONG):
                next_start = next((i for i, b in enumerate(buffer) if b in (ACK, START_SHORT, START_LONG)), len(buffer))
                self._skip(next_start, "garbage", "bytes outside any frame")
                continue
            if start == ACK:
                size = 1
            elif start == START_SHORT:
                size = 5
            else:
                if len(buffer) >= 4 and (buffer[1] != buffer[2] or buffer[3] != START_LONG or buffer[1] < 3):
                    self._skip(1, "bad_header", "68 not followed by L L 68")
                    continue
                if len(buffer) < 2:
                    break
                size = buffer[1] + 6
            if len(buffer) < size:
                break
            try:
                frame = parse_frame(bytes(buffer[:size]))
            except DecodeError as exc:
                self._skip(1, exc.reason, exc.message)
                continue
            self._close_skip()
            del buffer[:size]
            frames.append(frame)
        return frames
