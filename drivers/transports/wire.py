"""Serial line timing: character time and the silence between frames."""

from __future__ import annotations


def char_bits(bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> int:
    """Bits on the wire per character: start bit, data bits, parity bit, stop bits (8E1 = 11)."""
    return 1 + bytesize + (0 if parity.upper() == "N" else 1) + stopbits


def char_time_s(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    return char_bits(bytesize, parity, stopbits) / baudrate


def wire_time_s(nbytes: int, baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    """How long `nbytes` take on the line."""
    return nbytes * char_time_s(baudrate, bytesize, parity, stopbits)


def rtu_silence_s(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    """Modbus RTU inter-frame silence: 3.5 character times, fixed at 1.75 ms above 19200 baud."""
    if baudrate > 19200:
        return 0.00175
    return 3.5 * char_time_s(baudrate, bytesize, parity, stopbits)
