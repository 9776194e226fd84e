"""Recorded cases as data: `cases/<name>/` holds the input and `expected.json` or `error.txt`.

Inputs: `payload.json` or `payload.txt` (bytes as stored), `frame.hex` (hex, any whitespace), `topic.txt`,
`received_at.txt` (default RECEIVED_AT), `settings.toml` (driver settings, default none).
Expected: lists `readings`, `events`, `statuses`, `replies` compared exactly (a list not named must be
empty), or `reading_count` with `readings_include`; `response_hex` / `response_text`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from drivers.base import Decoded, Quality, Uplink

RECEIVED_AT = datetime.fromisoformat("2026-11-27T10:20:00+00:00")
LISTS = ("readings", "events", "statuses", "replies")


@dataclass(frozen=True)
class Case:
    name: str
    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).exists()

    @property
    def payload(self) -> bytes:
        for name in ("payload.json", "payload.txt"):
            if self.has(name):
                return self.file(name).read_bytes()
        return bytes.fromhex("".join(self.file("frame.hex").read_text().split()))

    @property
    def uplink(self) -> Uplink:
        topic = self.file("topic.txt").read_text().strip() if self.has("topic.txt") else None
        received = self.file("received_at.txt").read_text().strip() if self.has("received_at.txt") else None
        at = datetime.fromisoformat(received) if received else RECEIVED_AT
        return Uplink(self.payload, at, topic, "test")

    @property
    def settings(self) -> dict[str, Any]:
        return tomllib.loads(self.file("settings.toml").read_text()) if self.has("settings.toml") else {}

    @property
    def error(self) -> str | None:
        return self.file("error.txt").read_text().strip() if self.has("error.txt") else None

    @property
    def expected(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.file("expected.json").read_text())
        return found


def cases(folder: Path) -> list[Case]:
    return [Case(path.name, path) for path in sorted((folder / "cases").iterdir()) if path.is_dir()]


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        assert value.tzinfo is not None, "timestamps must be timezone-aware"
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def as_json(decoded: Decoded) -> dict[str, Any]:
    """Decoded as plain JSON values: decimals as exact text, timestamps as ISO 8601, Nones left out."""
    out: dict[str, Any] = {
        "readings": [
            {"meter_no": r.meter_no, "channel": r.channel, "ts": r.ts, "value": r.value}
            | ({} if r.quality is Quality.GOOD else {"quality": r.quality.value})
            for r in decoded.readings
        ],
        "events": [
            {"meter_no": e.meter_no, "kind": e.kind.value, "ts": e.ts, "detail": dict(e.detail)} for e in decoded.events
        ],
        "statuses": [
            {
                key: value
                for key, value in (
                    ("meter_no", s.meter_no),
                    ("ts", s.ts),
                    ("valve", s.valve),
                    ("battery_v", s.battery_v),
                    ("rssi_dbm", s.rssi_dbm),
                )
                if value is not None
            }
            for s in decoded.statuses
        ],
        "replies": [
            {"meter_no": r.meter_no, "ts": r.ts, "ok": r.ok, "detail": dict(r.detail)}
            | ({} if r.correlation_id is None else {"correlation_id": r.correlation_id})
            for r in decoded.replies
        ],
    }
    if decoded.response is not None:
        text = decoded.response.decode("ascii", "replace")
        is_text = text.isalnum()
        out["response_text" if is_text else "response_hex"] = text if is_text else decoded.response.hex(" ").upper()
    for status in out["statuses"]:
        if "valve" in status:
            status["valve"] = status["valve"].value
    plain: dict[str, Any] = _plain(out)
    return plain


def check(decoded: Decoded, expected: dict[str, Any]) -> None:
    actual = as_json(decoded)
    for key in LISTS:
        if key in expected:
            assert actual[key] == expected[key], key
        elif f"{key}_include" in expected:
            for item in expected[f"{key}_include"]:
                assert item in actual[key], item
        else:
            assert actual[key] == [], key
    if "reading_count" in expected:
        assert len(actual["readings"]) == expected["reading_count"]
    for key in ("response_hex", "response_text"):
        assert actual.get(key) == expected.get(key), key
