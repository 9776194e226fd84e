"""Valve and credit commands to polled meters, run by the poller on the meter's own bus between two polls.

Modbus: the coil or register the device profile names under `[valve]` is written once — a write that
gets no answer is never repeated, because the device may have acted on it — and the valve state is read
back from the profile's `[valve.state]`. The outcome reaches the store as a reply in the poller's batch,
where `collector.commands.record_replies` takes it like any meter's reply:

- written, and read back in the expected state: a reply with the command's correlation id → confirmed;
- refused with a Modbus exception response: a failed reply → failed / meter_refused;
- written, but the state read back is not (yet) the expected one or could not be read: evidence only
  (`<id>:w`); the command waits out its deadline and is reconciled from a fresh read-back;
- a profile without `[valve.state]`: the acknowledged write is the confirmation;
- no answer to the write: nothing is sent again and nothing is claimed; the dispatcher's timeout makes the
  command unknown and asks for the read-back (`<id>:r<n>`), which reports the valve state as evidence.

CJ/T 188 on a serial bus (or through a TCP serial gateway): `A017` valve control and `A013` purchase, each
sent once, the same way:

- the meter's `84` answer → a reply with the command's correlation id: for the valve, confirmed when the
  status bytes the vendor appends (or a `901F` read right after, when it appends none) show the expected
  state, evidence (`<id>:w`) otherwise; for a purchase, the acknowledgement (a repeated sequence is
  acknowledged by the meter but not counted again);
- an error answer (`C4`) → failed / meter_refused;
- no answer: nothing is sent again; after the timeout the read-back reads `901F` (valve) or `8105` (the
  meter's last purchase sequence), and the dispatcher reconciles from it.

M-Bus has no valve or credit command of its own: such commands fail as `unsupported` before they are sent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

from collector.commands import EXPECTED_VALVE
from collector.poll_devices import Cjt188Reader, Frame, ModbusReader, PollResult, Target
from drivers.base import Command, CommandKind, CommandReply, Decoded, UnsupportedCommand
from drivers.cjt188 import codec as cjt188
from drivers.cjt188.driver import PURCHASE_SEQUENCE_MODULUS

log = logging.getLogger(__name__)

READS = (CommandKind.READ, CommandKind.CREDIT_READ)


async def run_command(reader: object, target: Target, command: Command) -> PollResult:
    """Execute one command on a polled device; the frames in the result carry its reply or evidence."""
    if isinstance(reader, Cjt188Reader):
        return await _cjt188_command(reader, target, command)
    if not isinstance(reader, ModbusReader) or target.modbus is None:
        return PollResult(error=f"{target.driver_key} meters on a polled bus take no commands")
    if command.kind in READS:
        return await _read_back(reader, target, command)
    return await _drive_valve(reader, target, command)


async def _read_back(reader: ModbusReader, target: Target, command: Command) -> PollResult:
    result = PollResult()
    decoded = await reader.read_valve(target, result)
    if decoded is None:
        return result
    valve = _valve(decoded)
    detail = {"read": "valve_state"} | ({"valve": valve} if valve else {})
    decoded.replies.append(CommandReply(target.meter_no, _now(), True, command.correlation_id, detail))
    result.frames.append(Frame(b"", _now(), decoded))
    return result


async def _drive_valve(reader: ModbusReader, target: Target, command: Command) -> PollResult:
    assert target.modbus is not None
    result = PollResult()
    try:
        request = target.modbus.write_request(command)
    except UnsupportedCommand as exc:
        reply = CommandReply(target.meter_no, _now(), False, command.correlation_id, {"error": str(exc)})
        result.frames.append(Frame(b"", _now(), Decoded(replies=[reply])))
        return result
    written = await reader.write(int(target.address), request, result)
    if written is None:
        log.warning(
            "valve write not answered; the state is read back before anything is sent again",
            extra={"meter_no": target.meter_no, "command": command.correlation_id, "error": result.error},
        )
        return result
    if written is False:
        refused = {"write": "refused", "error": result.error, "function_code": request.function_code}
        reply = CommandReply(target.meter_no, _now(), False, command.correlation_id, refused)
        result.frames.append(Frame(request.pdu(), _now(), Decoded(replies=[reply])))
        return result
    profile_valve = target.modbus.profile.valve
    if profile_valve is None or profile_valve.readback is None:  # nothing to read: the acknowledgement it is
        reply = CommandReply(target.meter_no, _now(), True, command.correlation_id, {"write": "ok"})
        result.frames.append(Frame(request.pdu(), _now(), Decoded(replies=[reply])))
        return result
    decoded = await reader.read_valve(target, result) or Decoded()
    valve = _valve(decoded)
    detail = {"write": "ok"} | ({"valve": valve} if valve else {})
    confirmed = valve is not None and valve in EXPECTED_VALVE.get(command.kind.value, ())
    correlation_id = command.correlation_id if confirmed else f"{command.correlation_id}:w"
    decoded.replies.append(CommandReply(target.meter_no, _now(), True, correlation_id, detail))
    result.frames.append(Frame(request.pdu(), _now(), decoded))
    return result


async def _cjt188_command(reader: Cjt188Reader, target: Target, command: Command) -> PollResult:
    result = PollResult()
    if command.kind in READS:
        di = cjt188.DI_PURCHASE_READ if command.kind is CommandKind.CREDIT_READ else cjt188.DI_METERING
        decoded = await reader.exchange(target, di, result)
        if decoded is not None:
            _correlate(decoded, command.correlation_id, {"read": f"{di:04X}"})
        return result
    address, w = command.address or target.address, reader.workarounds
    if command.kind in (CommandKind.VALVE_OPEN, CommandKind.VALVE_CLOSE):
        open_valve = command.kind is CommandKind.VALVE_OPEN
        answer = await reader.write_once(
            target, lambda ser: cjt188.encode_valve(address, open_valve, ser, w), cjt188.DI_VALVE, result
        )
    elif command.kind is CommandKind.CREDIT:
        if command.amount is None or command.sequence is None or command.amount <= 0 or command.sequence < 0:
            return _refused_before_sending(target, command, result, "a top-up needs a positive amount and sequence")
        wire_sequence = command.sequence % PURCHASE_SEQUENCE_MODULUS  # one byte on the wire; it wraps
        amount = command.amount
        answer = await reader.write_once(
            target,
            lambda ser: cjt188.encode_purchase(address, wire_sequence, amount, ser, w),
            cjt188.DI_PURCHASE_WRITE,
            result,
        )
    else:
        return _refused_before_sending(target, command, result, f"cjt188 cannot send {command.kind}")
    if answer is None:
        log.warning(
            "CJ/T 188 write not answered; the meter is read before anything is sent again",
            extra={"meter_no": target.meter_no, "command": command.correlation_id, "error": result.error},
        )
        return result
    decoded, raw = answer
    refused = not decoded.replies or not all(reply.ok for reply in decoded.replies)
    if refused:
        detail: dict[str, object] = {"write": "refused", **(decoded.replies[0].detail if decoded.replies else {})}
        decoded.replies = [CommandReply(target.meter_no, _now(), False, command.correlation_id, detail)]
        result.frames.append(Frame(raw, _now(), decoded))
        return result
    if command.kind is CommandKind.CREDIT:
        _correlate(decoded, command.correlation_id, {"write": "ok"})
        result.frames.append(Frame(raw, _now(), decoded))
        return result
    valve = _valve(decoded)
    result.frames.append(Frame(raw, _now(), decoded))
    if valve is None:  # the vendor appends no status to its answer: read the metering data, which has it
        read_back = await reader.exchange(target, cjt188.DI_METERING, result)
        valve = _valve(read_back) if read_back is not None else None
    confirmed = valve is not None and valve in EXPECTED_VALVE.get(command.kind.value, ())
    _correlate(
        decoded,
        command.correlation_id if confirmed else f"{command.correlation_id}:w",
        {"write": "ok"} | ({"valve": valve} if valve else {}),
    )
    return result


def _correlate(decoded: Decoded, correlation_id: str, extra: Mapping[str, object]) -> None:
    """Name the command the meter's answer belongs to (CJ/T 188 answers carry no correlation id; the poll
    knows what it asked), with the valve state the answer reports. Every decoded answer carries its reply."""
    valve = _valve(decoded)
    extra = {**extra, **({"valve": valve} if valve else {})}
    decoded.replies = [
        replace(reply, correlation_id=correlation_id, detail={**reply.detail, **extra}) for reply in decoded.replies
    ]


def _refused_before_sending(target: Target, command: Command, result: PollResult, error: str) -> PollResult:
    reply = CommandReply(target.meter_no, _now(), False, command.correlation_id, {"error": error})
    result.frames.append(Frame(b"", _now(), Decoded(replies=[reply])))
    return result


def _valve(decoded: Decoded) -> str | None:
    found = [status.valve for status in decoded.statuses if status.valve is not None]
    return found[-1].value if found else None


def _now() -> datetime:
    return datetime.now(UTC)
