"""ModbusLink against scripted Modbus TCP and RTU-over-TCP peers on real sockets: pipelined requests
matched by transaction id, timeouts, late answers, lost connections, exception answers, bad CRCs,
and junk before an RTU answer."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import pytest

from drivers.transports.modbus import DeviceException, LinkError, ModbusLink
from drivers.transports.modbus_frames import rtu_adu

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def mbap_request(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    head = await reader.readexactly(7)
    tid, _, length, unit = struct.unpack(">HHHB", head)
    return tid, unit, await reader.readexactly(length - 1)


def mbap_answer(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def registers(pdu: bytes) -> bytes:
    """An answer to a read request PDU whose words count up from the address it asks for."""
    address, count = struct.unpack(">HH", pdu[1:5])
    return bytes([pdu[0], 2 * count]) + struct.pack(f">{count}H", *range(address, address + count))


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


# --- Modbus TCP ----------------------------------------------------------------------------------


def test_pipelined_requests_are_matched_by_transaction_id_whatever_the_answer_order() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            batch = [await mbap_request(reader) for _ in range(3)]
            for tid, unit, pdu in reversed(batch):  # the last asked is answered first
                writer.write(mbap_answer(tid, unit, registers(pdu)))
            writer.write(b"")
            await writer.drain()

    async def main() -> None:
        server, port = await serve(handler)
        link = ModbusLink(host="127.0.0.1", port=port, timeout_s=5)
        try:
            for _ in range(3):
                answers = await asyncio.gather(*(link.read(3, address, 2, 1) for address in (10, 200, 3000)))
                assert answers == [[10, 11], [200, 201], [3000, 3001]]
            sock = link._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            link.close()
            server.close()

    run(main())


def test_a_request_that_times_out_does_not_hold_up_the_others_and_its_late_answer_is_dropped() -> None:
    late: list[tuple[int, int, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, pdu = await mbap_request(reader)
            if unit == 9:  # a slow device behind a gateway: its answer comes after the timeout
                late.append((tid, unit, pdu))
                continue
            writer.write(mbap_answer(tid, unit, registers(pdu)))
            for item in late:  # …sent together with the next good answer
                writer.write(mbap_answer(item[0], item[1], registers(bytes([3, 0, 0, 0, 1]))))
            late.clear()

    async def main() -> None:
        server, port = await serve(handler)
        link = ModbusLink(host="127.0.0.1", port=port, timeout_s=0.3)
        try:
            started = time.monotonic()
            slow = asyncio.ensure_future(link.read(3, 0, 1, 9))
            assert await link.read(3, 5, 1, 1) == [5]
            with pytest.raises(LinkError, match="no answer from unit 9"):
                await slow
            assert 0.25 <= time.monotonic() - started < 1.5
            assert await link.read(3, 7, 2, 1) == [7, 8]  # the late answer to unit 9 arrives here: dropped
            assert await link.read(3, 1, 1, 1) == [1]
            assert link.take_rejected() == []
        finally:
            link.close()
            server.close()

    run(main())


def test_a_lost_connection_fails_the_requests_in_flight_and_the_next_request_reconnects() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        tid, unit, pdu = await mbap_request(reader)
        if connections == 1:
            writer.close()  # the gateway restarts
            return
        writer.write(mbap_answer(tid, unit, registers(pdu)))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        link = ModbusLink(host="127.0.0.1", port=port, timeout_s=5)
        try:
            started = time.monotonic()
            with pytest.raises(LinkError, match="lost"):
                await link.read(3, 0, 1, 1)
            assert time.monotonic() - started < 2, "not the timeout"
            assert not link.connected
            assert await link.read(3, 4, 1, 1) == [4]
            assert connections == 2
        finally:
            link.close()
            server.close()

    run(main())


def test_exception_and_malformed_answers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, pdu = await mbap_request(reader)
            if pdu[0] == 4:
                writer.write(mbap_answer(tid, unit, bytes([0x84, 0x02])))  # illegal data address
            elif pdu[0] == 5:
                writer.write(mbap_answer(tid, unit, pdu))  # a write is answered with its echo
            else:
                writer.write(mbap_answer(tid, unit, bytes([3, 4, 0, 1])))  # byte count 4, two bytes of data

    async def main() -> None:
        server, port = await serve(handler)
        link = ModbusLink(host="127.0.0.1", port=port, timeout_s=2)
        try:
            with pytest.raises(DeviceException) as refused:
                await link.read(4, 0, 1, 3)
            assert (refused.value.function_code, refused.value.exception_code) == (4, 2)
            assert refused.value.raw[6:] == bytes([3, 0x84, 0x02])  # unit id and the exception PDU
            await link.write(5, 0, [1], 3)
            with pytest.raises(LinkError, match="does not fit"):
                await link.read(3, 0, 2, 3)
            [bad] = link.take_rejected()
            assert bad.reason == "bad_response" and bad.raw.endswith(bytes([3, 4, 0, 1]))
        finally:
            link.close()
            server.close()

    run(main())


def test_cannot_connect_is_a_link_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused

    async def main() -> None:
        link = ModbusLink(host="127.0.0.1", port=port, timeout_s=0.5)
        with pytest.raises(LinkError, match="cannot connect"):
            await link.read(3, 0, 1, 1)

    run(main())


# --- RTU over TCP --------------------------------------------------------------------------------

GOOD_WORDS = [0x0001, 0xE240, 3412, 1, 0]


def rtu_answer(unit: int, words: list[int]) -> bytes:
    return rtu_adu(unit, bytes([3, 2 * len(words)]) + struct.pack(f">{len(words)}H", *words))


def scripted_gateway(answers: list[list[bytes]]) -> Handler:
    """An RTU-over-TCP gateway that answers each request (8 bytes) with the next script: chunks sent apart."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunks in answers:
            await reader.readexactly(8)
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.005)  # separate TCP segments
        await reader.read()

    return handler


@pytest.mark.parametrize(
    "junk",
    [bytes([4, 3]), bytes([4, 3, 10]), bytes([4, 0x83]), bytes([4, 3, 10, 0, 1, 0xE2])],
    ids=["unit_and_function", "with_byte_count", "exception_form", "cut_off_answer"],
)
def test_rtu_junk_that_looks_like_the_answer_does_not_swallow_it(junk: bytes) -> None:
    good = rtu_answer(4, GOOD_WORDS)
    stream = junk + good
    scripts = [[stream[:cut], stream[cut:]] for cut in range(1, len(stream))]

    async def main() -> None:
        server, port = await serve(scripted_gateway(scripts))
        link = ModbusLink(host="127.0.0.1", port=port, framer="rtu", timeout_s=2)
        try:
            for _ in scripts:
                started = time.monotonic()
                assert await link.read(3, 0, 5, 4) == GOOD_WORDS
                assert time.monotonic() - started < 1, "found without waiting for the timeout"
                [skipped] = link.take_rejected()
                assert (skipped.reason, skipped.raw) == ("garbage", junk)
        finally:
            link.close()
            server.close()

    run(main())


def test_rtu_bad_crc_ends_the_request_once_the_line_is_quiet_and_keeps_the_frame() -> None:
    good = rtu_answer(4, GOOD_WORDS)
    bad = good[:-1] + bytes([good[-1] ^ 0xFF])
    refused = rtu_adu(4, bytes([0x83, 0x06]))

    async def main() -> None:
        gateway = scripted_gateway([[bad[:6], bad[6:]], [b"\x04\x03", good], [refused], [good[:9]], [], [good]])
        server, port = await serve(gateway)
        link = ModbusLink(host="127.0.0.1", port=port, framer="rtu", timeout_s=3, quiet_s=0.05)
        try:
            started = time.monotonic()
            with pytest.raises(LinkError, match="bad CRC"):
                await link.read(3, 0, 5, 4)
            assert time.monotonic() - started < 1, "not the 3 s timeout"
            assert [(r.reason, r.raw) for r in link.take_rejected()] == [("bad_crc", bad)]

            assert await link.read(3, 0, 5, 4) == GOOD_WORDS
            assert [(r.reason, r.raw) for r in link.take_rejected()] == [("garbage", b"\x04\x03")]

            with pytest.raises(DeviceException) as busy:
                await link.read(3, 0, 5, 4)
            assert busy.value.raw == refused and busy.value.exception_code == 6

            link.timeout_s = 0.3
            with pytest.raises(LinkError, match="no answer"):
                await link.read(3, 0, 5, 4)  # half an answer, then nothing
            assert [(r.reason, r.raw) for r in link.take_rejected()] == [("truncated", good[:9])]
            with pytest.raises(LinkError, match="no answer"):
                await link.read(3, 0, 5, 4)  # nothing at all
            assert link.take_rejected() == []
            assert await link.read(3, 0, 5, 4) == GOOD_WORDS
        finally:
            link.close()
            server.close()

    run(main())


def test_rtu_late_answer_is_reported_with_the_next_request_which_gets_its_own() -> None:
    good = rtu_answer(4, GOOD_WORDS)
    other = rtu_answer(4, [9, 9, 9, 9, 9])

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        await asyncio.sleep(0.4)  # after the client's timeout
        writer.write(other)
        await reader.readexactly(8)
        writer.write(good)
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        link = ModbusLink(host="127.0.0.1", port=port, framer="rtu", timeout_s=0.2)
        try:
            with pytest.raises(LinkError, match="no answer"):
                await link.read(3, 0, 5, 4)
            await asyncio.sleep(0.4)
            link.timeout_s = 2
            assert await link.read(3, 0, 5, 4) == GOOD_WORDS
            assert [(r.reason, r.raw) for r in link.take_rejected()] == [("unexpected", other)]
        finally:
            link.close()
            server.close()

    run(main())
