"""Cut CJ/T 188 frames out of a byte stream fed in arbitrary chunks."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.cjt188.frame import END, HEADER_LEN, PREAMBLE, START, checksum

MAX_HELD_SKIPPED = 256


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One structurally complete frame (68 … 16, checksum good), without its FE preamble."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Skipped:
    """Bytes that are not part of any frame; `reason` is why the first of them was dropped."""

    data: bytes
    reason: str  # "garbage", "bad_checksum", "bad_end", "truncated"


class StreamFramer:
    """Feed chunks, get frames and skipped bytes in stream order.

    FE preambles are dropped silently. Skipped bytes are reported in one piece right before the next
    frame, on `flush`, or once 256 of them are held. After a bad checksum or end byte the framer skips the 68 it
    started at and searches the next one, so a frame hidden behind a false start is still found. A false
    start with a large length byte holds back up to 268 bytes until they arrive (or until `flush`).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._skipped = bytearray()
        self._skip_reason = ""

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[RawFrame | Skipped]:
        self._buffer.extend(chunk)
        return self._scan(final=False)

    def flush(self) -> list[RawFrame | Skipped]:
        """End of stream: frames still found in the held bytes, and the rest as skipped."""
        out = self._scan(final=True)
        if self._buffer:
            self._skip(bytes(self._buffer), "truncated")
            self._buffer.clear()
        return out + self._take_skipped()

    def _skip(self, data: bytes | bytearray, reason: str) -> None:
        if not self._skipped:
            self._skip_reason = reason
        self._skipped.extend(data)

    def _take_skipped(self) -> list[RawFrame | Skipped]:
        if not self._skipped:
            return []
        found = Skipped(bytes(self._skipped), self._skip_reason)
        self._skipped.clear()
        return [found]

    def _scan(self, final: bool) -> list[RawFrame | Skipped]:
        out: list[RawFrame | Skipped] = []
        buffer = self._buffer
        while buffer:
            start = buffer.find(START)
            if start < 0:
                # trailing FEs may be the preamble of a frame in the next chunk: keep them until then
                keep = 0 if final else len(buffer) - len(buffer.rstrip(bytes([PREAMBLE])))
                self._drop_before(len(buffer) - keep)
                break
            self._drop_before(start)
            if len(buffer) < HEADER_LEN:
                if final:
                    self._skip(buffer[:1], "truncated")
                    del buffer[:1]
                    continue
                break
            total = HEADER_LEN + buffer[10] + 2
            if len(buffer) < total:
                if final:
                    self._skip(buffer[:1], "truncated")
                    del buffer[:1]
                    continue
                break
            if checksum(buffer[: total - 2]) != buffer[total - 2]:
                self._skip(buffer[:1], "bad_checksum")
                del buffer[:1]
                continue
            if buffer[total - 1] != END:
                self._skip(buffer[:1], "bad_end")
                del buffer[:1]
                continue
            out.extend(self._take_skipped())
            out.append(RawFrame(bytes(buffer[:total])))
            del buffer[:total]
        if final or len(self._skipped) >= MAX_HELD_SKIPPED:
            out.extend(self._take_skipped())
        return out

    def _drop_before(self, index: int) -> None:
        """Drop buffer[:index]: FE right before a start is preamble, anything else is garbage."""
        head = bytes(self._buffer[:index])
        del self._buffer[:index]
        garbage = head.rstrip(bytes([PREAMBLE]))
        if garbage:
            self._skip(garbage, "garbage")
