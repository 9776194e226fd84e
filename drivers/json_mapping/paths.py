"""A small path language into JSON values.

`services[*].properties.totalVolume`: names separated by dots; `[n]` picks a list element, `[*]` every
element, and a `*` segment every value of an object (remembering its key, e.g. the device name of a
ThingsBoard gateway message). The empty path is the value itself. Names cannot contain `.`, `[`, `]` or `*`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_SEGMENT = re.compile(r"(?P<name>[^.\[\]*]+|\*)?(?P<selectors>(?:\[(?:\d+|\*)\])*)")
_SELECTOR = re.compile(r"\[(\d+|\*)\]")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
Step = tuple[str, str | int | None]  # ("key", name) | ("any_key", None) | ("index", n) | ("each", None)


@dataclass(frozen=True, slots=True)
class Path:
    text: str
    steps: tuple[Step, ...]

    @property
    def has_wildcards(self) -> bool:
        return any(kind in ("any_key", "each") for kind, _ in self.steps)

    @property
    def binds_key(self) -> bool:
        return any(kind == "any_key" for kind, _ in self.steps)

    def select(self, value: Any) -> Iterator[tuple[Any, str | None]]:
        """Every value the path reaches, with the key matched by the last `*` (None when there is none)."""
        yield from _walk(value, self.steps, None)

    def get(self, value: Any) -> Any:
        """The one value a path without wildcards reaches, or MISSING."""
        for found, _ in _walk(value, self.steps, None):
            return found
        return MISSING


def compile_path(text: str) -> Path:
    """ValueError with the offending text when the syntax is wrong."""
    steps: list[Step] = []
    if text == "":
        return Path(text, ())
    for segment in text.split("."):
        match = _SEGMENT.fullmatch(segment)
        if not segment or match is None:
            raise ValueError(f"bad path {text!r}: cannot read segment {segment!r}")
        name = match.group("name")
        if name == "*":
            steps.append(("any_key", None))
        elif name is not None:
            steps.append(("key", name))
        for selector in _SELECTOR.findall(match.group("selectors")):
            steps.append(("each", None) if selector == "*" else ("index", int(selector)))
    return Path(text, tuple(steps))


def _walk(value: Any, steps: tuple[Step, ...], bound: str | None) -> Iterator[tuple[Any, str | None]]:
    if not steps:
        yield value, bound
        return
    (kind, arg), rest = steps[0], steps[1:]
    if kind == "key" and isinstance(value, dict) and arg in value:
        yield from _walk(value[arg], rest, bound)
    elif kind == "any_key" and isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, rest, key)
    elif kind == "index" and isinstance(value, list) and isinstance(arg, int) and arg < len(value):
        yield from _walk(value[arg], rest, bound)
    elif kind == "each" and isinstance(value, list):
        for item in value:
            yield from _walk(item, rest, bound)
