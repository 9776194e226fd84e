"""Values to and from 16-bit register words, exactly.

Integers and BCD stay exact. A float register value becomes the shortest decimal that reads back as
the same float (float32: at most 9 significant digits), so 0.678 stored as float32 decodes to
Decimal("0.678"), not to the binary expansion 0.67799997329711914.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from decimal import Context, Decimal

from drivers.base import DecodeError
from drivers.modbus.profile import FIXED_WORDS, FLOAT_TYPES, Encoding, Order, ValueType

EXACT = Context(prec=80)  # wide enough that products of register values and scales never round

_SIGNED = {ValueType.INT16, ValueType.INT32, ValueType.INT64}


def shortest_float32(number: float) -> Decimal:
    """The shortest decimal string that rounds to the same float32."""
    target = struct.pack(">f", number)
    for digits in range(1, 10):
        text = f"{number:.{digits}g}"
        try:
            if struct.pack(">f", float(text)) == target:
                return Decimal(text)
        except OverflowError:  # rounded up past the largest float32
            continue
    return Decimal(repr(number))  # unreachable: 9 significant digits always round-trip a float32


def _float_value(kind: ValueType, data: bytes) -> Decimal:
    number = struct.unpack(">f" if kind is ValueType.FLOAT32 else ">d", data)[0]
    if not math.isfinite(number):
        raise DecodeError("bad_value", f"{kind.value} register value is not finite")
    return shortest_float32(number) if kind is ValueType.FLOAT32 else Decimal(repr(number))


def reorder(chunks: list[bytes], encoding: Encoding) -> list[bytes]:
    """Register words <-> big-endian value bytes; the same swap works in both directions."""
    if encoding.byte_order is Order.LITTLE:
        chunks = [chunk[::-1] for chunk in chunks]
    if encoding.word_order is Order.LITTLE:
        chunks = chunks[::-1]
    return chunks


def words_to_bytes(words: Sequence[int], encoding: Encoding) -> bytes:
    return b"".join(reorder([word.to_bytes(2, "big") for word in words], encoding))


def bytes_to_words(data: bytes, encoding: Encoding) -> list[int]:
    chunks = reorder([data[i : i + 2] for i in range(0, len(data), 2)], encoding)
    return [int.from_bytes(chunk, "big") for chunk in chunks]


def _simple(kind: ValueType, data: bytes) -> Decimal:
    if kind in FLOAT_TYPES:
        return _float_value(kind, data)
    return Decimal(int.from_bytes(data, "big", signed=kind in _SIGNED))


def _bcd(data: bytes, decimals: int) -> Decimal:
    digits = data.hex()
    if not digits.isdigit():
        raise DecodeError("bad_bcd", f"register holds non-BCD digits {digits.upper()}")
    return Decimal(int(digits)).scaleb(-decimals)


def decode_words(encoding: Encoding, words: Sequence[int]) -> Decimal:
    """The value held in `words` (already checked to be 0..65535), before scaling."""
    kind = encoding.type
    if kind is ValueType.BOOL:
        return Decimal(1 if words[0] else 0)
    if kind is ValueType.BCD:
        return _bcd(words_to_bytes(words, encoding), encoding.decimals)
    if kind in (ValueType.INTREAL, ValueType.INT_FRACTION):
        assert encoding.integer_type is not None and encoding.fraction_type is not None
        split = FIXED_WORDS[encoding.integer_type]
        integer = _simple(encoding.integer_type, words_to_bytes(words[:split], encoding))
        fraction = _simple(encoding.fraction_type, words_to_bytes(words[split:], encoding))
        if encoding.fraction_type not in FLOAT_TYPES:
            fraction = EXACT.multiply(fraction, encoding.fraction_scale)
        if not 0 <= fraction < 1:
            raise DecodeError("bad_value", f"fraction part {fraction} is outside [0, 1)")
        return EXACT.add(integer, fraction)  # floor convention: -5.3 is held as -6 and 0.7
    return _simple(kind, words_to_bytes(words, encoding))


def _int_bytes(kind: ValueType, value: Decimal) -> bytes:
    if value != value.to_integral_value():
        raise ValueError(f"{kind.value} cannot hold the fraction in {value}")
    try:
        return int(value).to_bytes(2 * FIXED_WORDS[kind], "big", signed=kind in _SIGNED)
    except OverflowError:
        raise ValueError(f"{value} does not fit a {kind.value}") from None


def _simple_bytes(kind: ValueType, value: Decimal) -> bytes:
    if kind in FLOAT_TYPES:
        try:
            return struct.pack(">f" if kind is ValueType.FLOAT32 else ">d", float(value))
        except OverflowError:
            raise ValueError(f"{value} does not fit a {kind.value}") from None
    return _int_bytes(kind, value)


def encode_words(encoding: Encoding, value: Decimal) -> list[int]:
    """The register words a device holds for `value` (before scaling); ValueError if it does not fit."""
    kind = encoding.type
    if kind is ValueType.BOOL:
        return [1 if value else 0]
    if kind is ValueType.BCD:
        scaled = value.scaleb(encoding.decimals)
        if value < 0 or scaled != scaled.to_integral_value():
            raise ValueError(f"BCD with {encoding.decimals} decimals cannot hold {value}")
        digits = str(int(scaled)).rjust(4 * encoding.words, "0")
        if len(digits) > 4 * encoding.words:
            raise ValueError(f"{value} has too many digits for {encoding.words} BCD registers")
        return bytes_to_words(bytes.fromhex(digits), encoding)
    if kind in (ValueType.INTREAL, ValueType.INT_FRACTION):
        assert encoding.integer_type is not None and encoding.fraction_type is not None
        integer = value.to_integral_value(rounding="ROUND_FLOOR")
        fraction = EXACT.subtract(value, integer)
        if encoding.fraction_type not in FLOAT_TYPES:
            fraction = EXACT.divide(fraction, encoding.fraction_scale)
        data = _simple_bytes(encoding.integer_type, integer) + _simple_bytes(encoding.fraction_type, fraction)
        split = 2 * FIXED_WORDS[encoding.integer_type]
        return bytes_to_words(data[:split], encoding) + bytes_to_words(data[split:], encoding)
    return bytes_to_words(_simple_bytes(kind, value), encoding)
