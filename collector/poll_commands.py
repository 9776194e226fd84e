"""Valve commands to polled meters, run by the poller on the meter's own bus between two polls.

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
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from collector.commands import EXPECTED_VALVE
from collector.poll_devices import Frame, ModbusReader, PollResult, Target
from drivers.base import Command, CommandKind, CommandReply, Decoded, UnsupportedCommand

log = logging.getLogger(__name__)

READS = (CommandKind.READ, CommandKind.CREDIT_READ)


async def run_command(reader: object, target: Target, command: Command) -> PollResult:
    """Execute one command on a polled device; the frames in the result carry its reply or evidence."""
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


def _valve(decoded: Decoded) -> str | None:
    found = [status.valve for status in decoded.statuses if status.valve is not None]
    return found[-1].value if found else None


def _now() -> datetime:
    return datetime.now(UTC)
