"""Command rules as data: each `command_rule` row names a check; a refusal carries the rule's code.

Rules see a `RuleContext` (what is asked, when, for whom) and return True to refuse. Emergency closes
skip every rule. A rule applies to the command kinds in its `kinds` param (default: valve_close) and,
when it has `purposes`, only to those purposes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any


@dataclass(frozen=True, slots=True)
class RuleContext:
    kind: str  # valve_close, valve_open, credit
    purpose: str  # arrears, planned_stop, construction, leak, customer_request, prepaid_exhausted, other …
    emergency: bool
    now: datetime  # timezone-aware, in the utility's time zone
    calendar_kind: str | None = None  # today's command_calendar entry: holiday, workday or None
    customer_protected: bool = False
    bill_disputed: bool = False
    notice_served_at: datetime | None = None  # the newest notice served to the account


@dataclass(frozen=True, slots=True)
class Rule:
    code: str
    params: Mapping[str, Any]


def _hhmm(text: str) -> time:
    hours, _, minutes = str(text).partition(":")
    return time(int(hours), int(minutes or 0))


def _holiday(params: Mapping[str, Any], ctx: RuleContext) -> bool:
    return ctx.calendar_kind == "holiday"


def _weekend(params: Mapping[str, Any], ctx: RuleContext) -> bool:
    return ctx.now.weekday() >= 5 and ctx.calendar_kind != "workday"


def _disconnect_hours(params: Mapping[str, Any], ctx: RuleContext) -> bool:
    start, end = _hhmm(params.get("from", "08:00")), _hhmm(params.get("until", "16:00"))
    return not start <= ctx.now.time().replace(tzinfo=None) < end


def _notice_period(params: Mapping[str, Any], ctx: RuleContext) -> bool:
    hours = float(params.get("hours", 48))
    return ctx.notice_served_at is None or ctx.now - ctx.notice_served_at < timedelta(hours=hours)


def _protected(params: Mapping[str, Any], ctx: RuleContext) -> bool:
    return ctx.customer_protected


def _disputed(params: Mapping[str, Any], ctx: RuleContext) -> bool:
    return ctx.bill_disputed


CHECKS: dict[str, Callable[[Mapping[str, Any], RuleContext], bool]] = {
    "holiday": _holiday,
    "weekend": _weekend,
    "disconnect_hours": _disconnect_hours,
    "notice_period": _notice_period,
    "protected_customer": _protected,
    "disputed_bill": _disputed,
}


def applies(rule: Rule, ctx: RuleContext) -> bool:
    if ctx.kind not in rule.params.get("kinds", ["valve_close"]):
        return False
    purposes = rule.params.get("purposes")
    return purposes is None or ctx.purpose in purposes


def evaluate(rules: Sequence[Rule], ctx: RuleContext) -> list[str]:
    """The codes of the rules that refuse this command, in rule order; empty means allowed."""
    if ctx.emergency:
        return []
    refused = []
    for rule in rules:
        check = CHECKS.get(rule.code)
        if check is None:
            raise ValueError(f"command_rule {rule.code!r} has no check; known: {', '.join(CHECKS)}")
        if applies(rule, ctx) and check(rule.params, ctx):
            refused.append(rule.code)
    return refused
