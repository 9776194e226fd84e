"""Bill runs: approved consumption of a period → priced bills, bill lines and ledger charges, in one transaction.

The run holds an EXCLUSIVE lock on `bill` from its first read to its commit, so concurrent runs take turns.
Accounts already billed for the period are left out before pricing; with the unique (account, period) key
this makes a run idempotent: a second run of the same period and scope writes nothing and reports the
same bills. Everything (run row, bills, lines, ledger charges) is written with binary COPY in the run's
transaction, so a run that fails or is killed leaves nothing.

A run goes through the accounts in steps of account-id ranges (`STEP_ACCOUNTS`): a step is loaded and priced
on a connection of its own while the run's transaction writes the step before it, so the database writes
while polars prices (see `run_bills`). Per step, each input is one query:
- `approved_consumption` of the period for the accounts in scope (prepaid-meter accounts are billed by
  their meters, not here); an account's meters are summed per usage type (the meter's, else the account's);
- the accounts with their customers' household size, the meters' own usage types, tariffs
  (`tariff.definition`), billing-mode switches (`account_billing_mode`, the consumption of an item cut at a
  switch is split by days), quotas (`account_quota`, 一表多价);
- usage-type changes (改用气性质, `account_usage_type_change`): the consumption of a meter that follows its
  account's type is cut where a change takes effect inside the bill and each part priced at the type of its
  days (split by days, as at a mode switch); the bill's type is the account's type on its last day;
- tier volume already used in the cycle: the energy volume of earlier bills of the account and usage type
  whose period starts inside the cycle holding this period's start;
- for tariffs that split a price change by readings (`price_change_split = "readings"`), the meter readings
  around the bill of the accounts whose items a price change or new cycle cuts (`load_dated`).
Accounts that cannot be priced are left unbilled and reported (`problems`), never half-billed.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import accumulate, pairwise
from typing import Any, Literal

import polars as pl
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from billing import pgcopy
from billing.consumption import TS, VOLUME_CHANNEL, intervals_litres
from billing.pricing import (
    PricingConfig,
    cycle_start_of,
    items_split_by_readings,
    price_integers,
    prorated,
    run_first,
    run_start,
    with_stable_index,
)
from billing.quotas import split_by_quotas
from billing.reading_store import (
    DEFAULT_REGISTER_MAX,
    PG_EPOCH_US,
    copy_records,
    load_manual_readings,
    local_midnight,
)
from billing.rounding import VOLUME
from billing.tariff import TariffFrames, load_tariffs, tariff_frames
from meterhub.store import Store

log = logging.getLogger(__name__)

ScopeKind = Literal["all", "area", "book", "account"]
DEFAULT_DUE_DAYS = 15
DATED_HISTORY_DAYS = 62  # readings this far around a bill's days give the register at its first and last midnight


class BillRunError(RuntimeError):
    """A bill run that cannot start (bad period or scope, missing tariffs)."""


@dataclass(frozen=True)
class Scope:
    """Which accounts a run bills: all, an area (with its sub-areas), a reading book (抄表本) or one account."""

    kind: ScopeKind = "all"
    code: str = ""

    @classmethod
    def parse(cls, text: str | None) -> Scope:
        if not text or text == "all":
            return cls()
        kind, _, code = text.partition(":")
        if kind not in ("area", "book", "account") or not code:
            raise BillRunError(f"scope: expected all, area:CODE, book:CODE or account:NO, got {text!r}")
        return cls(kind, code)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}:{self.code}"


@dataclass(frozen=True)
class BillRunResult:
    """What a run did, and the period's bills in its scope afterwards (the same on every re-run)."""

    period: str
    scope: str
    run_id: int | None  # None when nothing was left to bill
    bills_created: int
    amount_created: Decimal
    bills: int
    amount: Decimal
    problems: pl.DataFrame  # account_id, usage_type, reason: left unbilled
    # busy seconds of load, compute, encode (steps, while the run writes the step before) and write, and total
    seconds: dict[str, float] = field(default_factory=dict)


def period_bounds(period: str) -> tuple[dt.date, dt.date]:
    try:
        start = dt.date.fromisoformat(f"{period}-01")
    except ValueError as exc:
        raise BillRunError(f"period: expected YYYY-MM, got {period!r}") from exc
    if len(period) != 7:
        raise BillRunError(f"period: expected YYYY-MM, got {period!r}")
    end = dt.date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return start, end


# ---- scope ------------------------------------------------------------------------------------------------


def scope_accounts_sql(scope: Scope) -> sql.Composable:
    """A query of the ids of the accounts in scope."""
    if scope.kind == "all":
        return sql.SQL("SELECT id FROM account")
    if scope.kind == "account":
        return sql.SQL("SELECT id FROM account WHERE account_no = {}").format(sql.Literal(scope.code))
    if scope.kind == "area":
        return sql.SQL(
            "WITH RECURSIVE areas AS (SELECT id FROM area WHERE code = {} "
            "UNION SELECT a.id FROM area a JOIN areas p ON a.parent_id = p.id) "
            "SELECT ac.id FROM account ac JOIN community c ON c.id = ac.community_id "
            "WHERE c.area_id IN (SELECT id FROM areas)"
        ).format(sql.Literal(scope.code))
    return sql.SQL(
        "SELECT DISTINCT m.account_id FROM reading_book b JOIN reading_book_meter bm ON bm.book_id = b.id "
        "JOIN meter m ON m.id = bm.meter_id WHERE b.code = {} AND m.account_id IS NOT NULL"
    ).format(sql.Literal(scope.code))


# ---- loading ----------------------------------------------------------------------------------------------


def copy_out(conn: psycopg.Connection[Any], query: sql.Composable, schema: dict[str, Any]) -> pl.DataFrame:
    """A query's rows as a frame, through COPY … TO STDOUT in CSV (one round trip, parsed by polars)."""
    buffer = io.BytesIO()
    statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        for data in copy:
            buffer.write(data)
    if buffer.tell() == 0:
        return pl.DataFrame(schema=schema)
    buffer.seek(0)
    text_schema = {name: (pl.String if isinstance(dtype, pl.Decimal) else dtype) for name, dtype in schema.items()}
    frame = pl.read_csv(buffer, has_header=False, new_columns=list(schema), schema=text_schema)
    return frame.with_columns(pl.col(n).cast(d) for n, d in schema.items() if isinstance(d, pl.Decimal))


def copy_packed(
    conn: psycopg.Connection[Any], columns: dict[str, sql.Composable], rest: sql.Composable, block: sql.Composable
) -> pl.DataFrame:
    """`SELECT columns rest` as an Int64 frame: each column an int8 expression, the rows packed on the server
    into one bytea per `block` (fixed-width records parsed by numpy: a COPY message per row would cost more
    in Python than the rows themselves). Date columns are sent as days since 2000-01-01 (see `_dates`)."""
    record = sql.SQL(" || ").join(sql.SQL("int8send(({})::int8)").format(expr) for expr in columns.values())
    query = sql.SQL("SELECT string_agg({}, ''::bytea) {} GROUP BY {}").format(record, rest, block)
    frame = copy_records(conn, query, list(columns))
    return frame if frame.height else pl.DataFrame(schema=dict.fromkeys(columns, pl.Int64))


def _dates(*names: str) -> list[pl.Expr]:
    """Days since 2000-01-01 (PostgreSQL's epoch) as dates."""
    return [(pl.col(name) + pgcopy.PG_EPOCH_DAYS).cast(pl.Int32).cast(pl.Date) for name in names]


def _days(column: str) -> sql.Composable:
    return sql.SQL("{} - date '2000-01-01'").format(sql.SQL(column))


def load_store_tariffs(conn: psycopg.Connection[Any]) -> TariffFrames:
    """All tariffs of the store as pricing frames (keyed by usage type code)."""
    rows = conn.execute("SELECT u.code, t.definition FROM tariff t JOIN usage_type u ON u.id = t.usage_type_id")
    return tariff_frames(load_tariffs(dict(rows.fetchall())).values())


TYPE_CHANGE_SCHEMA = {
    "account_id": pl.Int64,
    "seq": pl.Int64,
    "effective_from": pl.Date,
    "old_usage_type_id": pl.Int64,
    "new_usage_type_id": pl.Int64,
}
ACCOUNT_METER_SCHEMA = {"account_id": pl.Int64, "meter_id": pl.Int64}


@dataclass
class RunInputs:
    # account_id, usage_type_id, main_usage_type_id, follow_seq, period_start, period_end, consumption_l,
    # household_size: an account's meters summed per usage type (see `consumption_items`)
    consumption: pl.DataFrame
    modes: pl.DataFrame  # account_id, effective_from, billing_mode
    quotas: pl.DataFrame  # account_id, usage_type_id, quota_m3, share_pct, priority
    used: pl.DataFrame  # account_id, usage_type_id, bill_start, volume_l of earlier bills
    usage_types: pl.DataFrame  # usage_type_id, usage_type (code)
    # account_id, seq (1.. in effective order), effective_from, old_usage_type_id, new_usage_type_id
    type_changes: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=TYPE_CHANGE_SCHEMA))
    meters: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=ACCOUNT_METER_SCHEMA))


AccountRange = tuple[int, int]  # account ids lo <= id < hi


def _accounts_filter(column: str, scope: Scope, accounts: AccountRange | None) -> sql.Composable:
    """SQL conditions (`AND …`, or nothing) keeping `column` (an account id) to the scope and the range."""
    parts: list[sql.Composable] = []
    if scope.kind != "all":
        parts.append(sql.SQL("AND {} IN ({})").format(sql.SQL(column), scope_accounts_sql(scope)))
    if accounts is not None:
        parts.append(
            sql.SQL("AND {col} >= {lo} AND {col} < {hi}").format(
                col=sql.SQL(column), lo=sql.Literal(accounts[0]), hi=sql.Literal(accounts[1])
            )
        )
    return sql.SQL(" ").join(parts)


@dataclass
class RunShared:
    """What every step of a run reads alike: read once per run."""

    households: pl.DataFrame  # customer_id, household_size of the customers of the accounts in scope
    meter_types: pl.DataFrame  # meter_id, meter_usage_type_id of the meters with a usage type of their own


def load_shared(conn: psycopg.Connection[Any], period: str, scope: Scope) -> RunShared:
    """The customers and meters of the accounts in scope (`RunShared`)."""
    everyone = scope.kind == "all"
    households = copy_packed(
        conn,
        {"customer_id": sql.SQL("cu.id"), "household_size": sql.SQL("cu.household_size")},
        sql.SQL("FROM customer cu WHERE true {}").format(
            sql.SQL("")
            if everyone
            else sql.SQL("AND cu.id IN (SELECT customer_id FROM account WHERE id IN ({}))").format(
                scope_accounts_sql(scope)
            )
        ),
        sql.SQL("cu.id / 1024"),
    )
    meter_types = copy_packed(
        conn,
        {"meter_id": sql.SQL("m.id"), "meter_usage_type_id": sql.SQL("m.usage_type_id")},
        sql.SQL("FROM meter m WHERE m.usage_type_id IS NOT NULL {}").format(
            sql.SQL("")
            if everyone
            else sql.SQL(
                "AND m.id IN (SELECT c.meter_id FROM billing_reading c WHERE c.period = {} AND c.account_id IN ({}))"
            ).format(sql.Literal(period), scope_accounts_sql(scope))
        ),
        sql.SQL("m.id / 1024"),
    )
    return RunShared(households, meter_types)


def load_inputs(
    conn: psycopg.Connection[Any],
    period: str,
    scope: Scope,
    accounts: AccountRange | None = None,
    shared: RunShared | Future[RunShared] | None = None,
    frames: TariffFrames | None = None,
) -> RunInputs:
    """The inputs of the accounts in scope (and in the id range `accounts`, when given) that are not billed
    for the period yet. Each is one query; the rows are joined in polars, which is cheaper than in the
    database. `shared` (`load_shared`, or a future of it) saves reading the customers and meters again for
    each range of a run; `frames` (the tariffs) limit the earlier bills read to the tier cycles in force."""
    start, _ = period_bounds(period)
    lit_period = sql.Literal(period)

    def only(column: str) -> sql.Composable:
        return _accounts_filter(column, scope, accounts)

    # One row per account and meter read in the period.
    rows = copy_packed(
        conn,
        {
            "account_id": sql.SQL("c.account_id"),
            "meter_id": sql.SQL("c.meter_id"),
            "period_start": _days("c.period_start"),
            "period_end": _days("c.period_end"),
            "consumption_l": sql.SQL("c.consumption_m3 * 1000"),
        },
        sql.SQL(
            "FROM approved_consumption c WHERE c.period = {period} {only} "
            "AND NOT EXISTS (SELECT 1 FROM bill b WHERE b.account_id = c.account_id AND b.period = {period} {bills})"
        ).format(period=lit_period, only=only("c.account_id"), bills=only("b.account_id")),
        sql.SQL("c.account_id / 1024"),
    ).with_columns(_dates("period_start", "period_end"))
    account_schema = dict.fromkeys(["account_id", "account_usage_type_id", "customer_id"], pl.Int64)
    account_rows = (
        pl.DataFrame(schema=account_schema)
        if rows.is_empty()  # e.g. a run again over a period billed already
        else copy_packed(
            conn,
            {
                "account_id": sql.SQL("a.id"),
                "account_usage_type_id": sql.SQL("a.usage_type_id"),
                "customer_id": sql.SQL("a.customer_id"),
            },
            sql.SQL("FROM account a WHERE a.billing_mode <> 'prepaid_meter' {}").format(only("a.id")),
            sql.SQL("a.id / 1024"),
        )
    )
    if shared is None:
        shared = load_shared(conn, period, scope)
    elif isinstance(shared, Future):
        shared = shared.result()
    rows = (  # prepaid-meter accounts are billed by their meters
        rows.join(account_rows, on="account_id", how="inner")
        .join(shared.households, on="customer_id", how="inner")
        .drop("customer_id")
    )
    meter_types = shared.meter_types
    changes = pl.DataFrame(
        conn.execute(
            sql.SQL(
                "SELECT account_id, row_number() OVER (PARTITION BY account_id ORDER BY effective_from, id), "
                "effective_from, old_usage_type_id, new_usage_type_id FROM account_usage_type_change c "
                "WHERE true {} ORDER BY 1, 2"
            ).format(only("c.account_id"))
        ).fetchall(),
        schema=TYPE_CHANGE_SCHEMA,
        orient="row",
    )
    moved = pl.DataFrame(
        conn.execute(
            sql.SQL(
                "SELECT ch.account_id, ch.seq, m.id FROM (SELECT account_id, action_id, row_number() OVER "
                "(PARTITION BY account_id ORDER BY effective_from, id) AS seq FROM account_usage_type_change c "
                "WHERE true {}) ch JOIN account_action x ON x.id = ch.action_id "
                "CROSS JOIN LATERAL jsonb_array_elements_text(coalesce(x.detail -> 'meters_changed', '[]')) "
                "AS n(meter_no) JOIN meter m ON m.meter_no = n.meter_no"
            ).format(only("c.account_id"))
        ).fetchall(),
        schema={"account_id": pl.Int64, "seq": pl.Int64, "meter_id": pl.Int64},
        orient="row",
    )
    consumption = consumption_items(rows, meter_types, changes, moved)
    modes = copy_out(
        conn,
        sql.SQL("SELECT account_id, effective_from, billing_mode FROM account_billing_mode c WHERE true {}").format(
            only("c.account_id")
        ),
        {"account_id": pl.Int64, "effective_from": pl.Date, "billing_mode": pl.String},
    )
    quotas = copy_out(
        conn,
        sql.SQL(
            "SELECT account_id, usage_type_id, quota_m3, share_pct, priority FROM account_quota c "
            "WHERE true {} ORDER BY account_id, priority, usage_type_id"
        ).format(only("c.account_id")),
        {
            "account_id": pl.Int64,
            "usage_type_id": pl.Int64,
            "quota_m3": VOLUME,
            "share_pct": pl.Decimal(38, 2),
            "priority": pl.Int32,
        },
    )
    # Tier volume of earlier bills in the cycle: the lines of those bills, found through the block range
    # index of bill_line by the id range of each earlier run's bills of these accounts (consecutive, as a run
    # writes its bills in account order) rather than by scanning all lines ever written.
    earlier = sql.SQL("b.period_start >= {low} AND b.period_start < {start} AND b.period <> {period} {only}").format(
        low=sql.Literal(earliest_cycle_start(frames, start) if frames is not None else start - dt.timedelta(days=366)),
        start=sql.Literal(start),
        period=lit_period,
        only=only("b.account_id"),
    )
    runs = (
        []
        if frames is not None and not _counts_cycles(frames)
        else conn.execute(
            sql.SQL("SELECT min(b.id), max(b.id) FROM bill b WHERE {} GROUP BY b.bill_run_id").format(earlier)
        ).fetchall()
    )
    used = pl.DataFrame(
        schema={"account_id": pl.Int64, "usage_type_id": pl.Int64, "bill_start": pl.Date, "volume_l": pl.Int64}
    )
    if runs:
        in_runs = sql.SQL(" OR ").join(
            sql.SQL("l.bill_id BETWEEN {} AND {}").format(sql.Literal(low), sql.Literal(high)) for low, high in runs
        )
        used = copy_packed(
            conn,
            {
                "account_id": sql.SQL("u.account_id"),
                "usage_type_id": sql.SQL("u.usage_type_id"),
                "bill_start": _days("u.period_start"),
                "volume_l": sql.SQL("u.volume_m3 * 1000"),
            },
            sql.SQL(
                "FROM (SELECT b.account_id, l.usage_type_id, b.period_start, sum(l.volume_m3) AS volume_m3 "
                "FROM bill b JOIN bill_line l ON l.bill_id = b.id WHERE l.line_kind = 'energy' AND ({}) AND {} "
                "GROUP BY 1, 2, 3) u"
            ).format(in_runs, earlier),
            sql.SQL("u.account_id / 1024"),
        ).with_columns(_dates("bill_start"))
    usage_types = pl.DataFrame(
        conn.execute("SELECT id, code FROM usage_type").fetchall(),
        schema={"usage_type_id": pl.Int64, "usage_type": pl.String},
        orient="row",
    )
    meters = rows.select("account_id", "meter_id").unique()
    return RunInputs(consumption, modes, quotas, used, usage_types, changes, meters)


def consumption_items(
    rows: pl.DataFrame, meter_types: pl.DataFrame, changes: pl.DataFrame, moved: pl.DataFrame
) -> pl.DataFrame:
    """An account's meter readings summed per usage type: the meter's own, else the account's.

    Usage-type changes (改用气性质, `account_usage_type_change`; `changes` numbered `seq` 1.. per account in
    effective order) make a timeline per account: its type on day d is the new type of the last change in
    effect on d, else the old type of the first change. A meter without a type of its own follows all of
    them (`follow_seq` 1); a meter with one follows from the first change that moved it (`moved`: the
    meters a change gave the new type), since it carries the account's type from then on; other meters keep
    their type. The main usage type (fixed charges, minimum charge, the bill's type) is the account's type on
    the bill's last day.
    """
    frame = (
        rows.join(meter_types, on="meter_id", how="left")
        .join(
            moved.group_by("account_id", "meter_id").agg(pl.col("seq").min().alias("moved_seq")),
            on=["account_id", "meter_id"],
            how="left",
        )
        .join(changes.group_by("account_id").len("changes"), on="account_id", how="left")
        .with_columns(
            usage_type_id=pl.coalesce("meter_usage_type_id", "account_usage_type_id"),
            follow_seq=pl.when(pl.col("changes").is_null())
            .then(None)
            .when(pl.col("meter_usage_type_id").is_null())
            .then(pl.lit(1, pl.Int64))
            .otherwise(pl.col("moved_seq")),
        )
    )
    keys = ["account_id", "usage_type_id", "follow_seq"]
    items = frame.select(
        *keys, "account_usage_type_id", "period_start", "period_end", "consumption_l", "household_size"
    )
    if items.get_column("account_id").n_unique() < items.height:  # accounts with several meters read
        items = items.group_by(keys).agg(
            pl.col("account_usage_type_id").first(),
            pl.col("period_start").min(),
            pl.col("period_end").max(),
            pl.col("consumption_l").sum(),
            pl.col("household_size").min(),
        )
    if changes.height:
        last_day = items.group_by("account_id").agg(pl.col("period_end").max().dt.offset_by("-1d").alias("day"))
        main = type_on(last_day, changes).select("account_id", pl.col("usage_type_id").alias("main_usage_type_id"))
        items = items.join(main, on="account_id", how="left")
    else:
        items = items.with_columns(main_usage_type_id=None)
    return items.select(
        "account_id",
        "usage_type_id",
        pl.coalesce("main_usage_type_id", "account_usage_type_id").alias("main_usage_type_id"),
        "follow_seq",
        "period_start",
        "period_end",
        "consumption_l",
        pl.col("household_size").cast(pl.Int32),
    )


def type_on(days: pl.DataFrame, changes: pl.DataFrame, from_seq: str | None = None) -> pl.DataFrame:
    """`days` (account_id, day, …) with `usage_type_id`: the type by the account's changes on that day (numbered
    from `from_seq` on, when given), null where the account has none."""
    keyed = days.with_row_index("_day")
    timeline = keyed.join(changes, on="account_id", how="inner")
    if from_seq is not None:
        timeline = timeline.filter(pl.col("seq") >= pl.col(from_seq))
    in_effect = timeline.filter(pl.col("effective_from") <= pl.col("day"))
    last = in_effect.group_by("_day").agg(pl.col("new_usage_type_id").sort_by("seq").last().alias("_new"))
    first = timeline.group_by("_day").agg(pl.col("old_usage_type_id").sort_by("seq").first().alias("_old"))
    return (
        keyed.join(last, on="_day", how="left")
        .join(first, on="_day", how="left")
        .sort("_day")
        .select(*days.columns, pl.coalesce("_new", "_old").alias("usage_type_id"))
    )


# ---- compute ----------------------------------------------------------------------------------------------


def _with_codes(frame: pl.LazyFrame, usage_types: pl.DataFrame, id_column: str, code_column: str) -> pl.LazyFrame:
    codes = usage_types.lazy().select(pl.col("usage_type_id").alias(id_column), pl.col("usage_type").alias(code_column))
    return frame.join(codes, on=id_column, how="left", maintain_order="left")


def cycle_used(inputs: RunInputs, frames: TariffFrames, period_start: dt.date) -> pl.LazyFrame:
    """account_id, usage_type, cycle_used_l: earlier bills that start inside the cycle holding `period_start`."""
    cycles = frames.tariffs.select(
        "usage_type",
        pl.col("cycle").cast(pl.String),
        cycle_start_of(
            pl.lit(period_start), pl.col("cycle").cast(pl.String), pl.col("cycle_month"), pl.col("cycle_day")
        ).alias("cycle_start"),
    )
    return (
        _with_codes(inputs.used.lazy(), inputs.usage_types, "usage_type_id", "usage_type")
        .join(cycles, on="usage_type", how="inner")
        .filter((pl.col("cycle") != "bill") & (pl.col("bill_start") >= pl.col("cycle_start")))
        .group_by("account_id", "usage_type")
        .agg(pl.col("volume_l").sum().alias("cycle_used_l"))
    )


def earliest_cycle_start(frames: TariffFrames, period_start: dt.date) -> dt.date:
    """The earliest start of a tier cycle (other than per bill) holding `period_start`: earlier bills that
    start before it count in no cycle of this period."""
    starts = frames.tariffs.filter(pl.col("cycle").cast(pl.String) != "bill").select(
        cycle_start_of(
            pl.lit(period_start), pl.col("cycle").cast(pl.String), pl.col("cycle_month"), pl.col("cycle_day")
        ).min()
    )
    earliest = starts.collect(engine="in-memory").item()
    return period_start if earliest is None else earliest


def _counts_cycles(frames: TariffFrames) -> bool:
    """Whether some tariff counts tiers over a cycle longer than the bill."""
    return bool(frames.tariffs.filter(pl.col("cycle").cast(pl.String) != "bill").select(pl.len()).collect().item())


def cut_items(items: pl.LazyFrame, cuts: pl.LazyFrame) -> pl.LazyFrame:
    """`items` (with a unique `_item`) cut at the dates `cut` of `cuts` (`_item`, `cut`) that fall inside them;
    `consumption_l` is split by days, floored cumulatively so that the pieces add up exactly."""
    inside = (
        cuts.join(items.select("_item", "period_start", "period_end"), on="_item")
        .filter((pl.col("cut") > pl.col("period_start")) & (pl.col("cut") < pl.col("period_end")))
        .select("_item", "cut")
    )
    starts = pl.concat([items.select("_item", pl.col("period_start").alias("cut")), inside]).unique()
    return (
        starts.join(items, on="_item")
        .sort("_item", "cut")
        .with_columns(piece_end=pl.col("cut").shift(-1).over("_item").fill_null(pl.col("period_end")))
        .with_columns(days=(pl.col("piece_end") - pl.col("cut")).dt.total_days())
        .with_columns(
            before=(pl.col("days").cum_sum() - pl.col("days")).over("_item"),
            total=pl.col("days").sum().over("_item"),
        )
        .with_columns(
            consumption_l=prorated(pl.col("consumption_l"), pl.col("before"), pl.col("days"), pl.col("total")),
            period_start=pl.col("cut"),
            period_end=pl.col("piece_end"),
        )
    )


def cut_at_usage_type_changes(items: pl.DataFrame, changes: pl.DataFrame, usage_types: pl.DataFrame) -> pl.DataFrame:
    """Items that follow their account's usage-type changes (`follow_seq`, see `consumption_items`) cut where
    one of those changes takes effect inside them, each piece priced at the type in effect on its first day
    (the volume split by days, as at a billing-mode switch)."""
    following = items.filter(pl.col("follow_seq").is_not_null())
    if following.is_empty():
        return items
    columns = items.columns
    indexed = following.with_row_index("_item")
    cuts = (
        indexed.select("_item", "account_id", "follow_seq")
        .join(changes, on="account_id")
        .filter(pl.col("seq") >= pl.col("follow_seq"))
        .select("_item", pl.col("effective_from").alias("cut"))
    )
    pieces = cut_items(indexed.lazy(), cuts.lazy()).collect(engine="in-memory")
    typed = type_on(pieces.rename({"cut": "day"}), changes, from_seq="follow_seq")
    codes = usage_types.select(pl.col("usage_type_id").alias("_type_id"), "usage_type")
    typed = typed.join(codes.rename({"usage_type": "_type"}), left_on="usage_type_id", right_on="_type_id", how="left")
    pieces = typed.with_columns(pl.coalesce("_type", pl.col("usage_type")).alias("usage_type"))
    return pl.concat([items.filter(pl.col("follow_seq").is_null()), pieces.select(columns)], how="vertical_relaxed")


def cut_at_mode_switches(items: pl.LazyFrame, modes: pl.DataFrame) -> pl.LazyFrame:
    """Items with `billing_mode`, cut where the account's mode changes inside the item (volume split by days)."""
    if modes.is_empty():
        return items.with_columns(billing_mode=pl.lit("tiered"))
    columns = items.collect_schema().names()
    with_index = with_stable_index(items, "_item")  # cuts and pieces join back on _item
    switches = modes.lazy().sort("account_id", "effective_from")
    cuts = with_index.select("_item", "account_id").join(
        switches.select("account_id", pl.col("effective_from").alias("cut")), on="account_id", how="inner"
    )
    pieces = cut_items(with_index, cuts.drop("account_id")).sort("cut")
    mode_at = pieces.join_asof(
        switches.select("account_id", pl.col("effective_from").alias("cut"), "billing_mode"),
        on="cut",
        by="account_id",
        strategy="backward",
        check_sortedness=False,  # sorted by "cut" overall, hence within each account
    )
    return mode_at.sort("_item", "cut").select(*columns, pl.col("billing_mode").fill_null("tiered"))


def bill_items(inputs: RunInputs, frames: TariffFrames, period_start: dt.date) -> pl.DataFrame:
    """Pricing items of the run: consumption with quotas split off, usage-type changes and mode switches cut,
    and the cycle volume used of each piece's usage type."""
    consumption = _with_codes(inputs.consumption.lazy(), inputs.usage_types, "usage_type_id", "usage_type")
    consumption = _with_codes(consumption, inputs.usage_types, "main_usage_type_id", "main_usage_type")
    items = consumption.select(
        "account_id",
        "usage_type",
        "main_usage_type",
        "follow_seq",
        "period_start",
        "period_end",
        "consumption_l",
        "household_size",
    )
    if inputs.quotas.height:
        # row order breaks ties of priority in split_by_quotas: keep the loaded order
        quotas = _with_codes(inputs.quotas.lazy(), inputs.usage_types, "usage_type_id", "usage_type")
        quotas = quotas.select("account_id", "usage_type", "quota_m3", "share_pct", "priority")
        items = split_by_quotas(items, quotas, secondary={"follow_seq": pl.lit(None, pl.Int64)})
    cut = cut_at_usage_type_changes(items.collect(engine="in-memory"), inputs.type_changes, inputs.usage_types)
    items = (
        cut.lazy()
        .drop("cycle_used_l", strict=False)
        .join(cycle_used(inputs, frames, period_start), on=["account_id", "usage_type"], how="left")
    )
    items = items.with_columns(pl.col("cycle_used_l").fill_null(0)).drop("follow_seq")
    return cut_at_mode_switches(items, inputs.modes).collect(engine="in-memory")


def load_dated(
    store: Store,
    conn: psycopg.Connection[Any],
    inputs: RunInputs,
    items: pl.DataFrame,
    frames: TariffFrames,
    config: PricingConfig,
) -> pl.DataFrame | None:
    """Dated consumption (account_id, day, consumption_m3) of the accounts whose items a price change or a
    new cycle cuts and whose tariff splits such items by readings (`price_change_split`), or None.

    From the readings of the accounts' meters (telemetry and manual readings, not the meters' own estimates;
    rollovers and resets as in `billing.consumption`): the use between two readings is spread evenly over the
    time between them, so a day's use is the register interpolated at its end less that at its start (local
    days). Daily readings at midnight give each day its own use; a reading taken on the day of a price
    change splits the use at that hour. The readings only weigh the parts of an item against each other:
    the item's volume stays the approved one.
    """
    wanted = items_split_by_readings(items, frames, config).collect(engine="in-memory")
    if wanted.is_empty():
        return None
    first, end = (
        items.join(wanted, on="account_id", how="semi")
        .select(pl.col("period_start").min(), pl.col("period_end").max())
        .row(0)
    )
    meters = inputs.meters.join(wanted, on="account_id", how="semi")
    meter_ids = meters["meter_id"].unique().sort().to_list()
    tz = store.settings.timezone
    margin = dt.timedelta(days=DATED_HISTORY_DAYS)
    since, until = local_midnight(first - margin, tz), local_midnight(end + margin, tz)
    # the meters' volume registers, packed as in `billing.reading_store.load_readings`, but on this step's
    # connection (a run holds three of the pool's already)
    telemetry = copy_records(
        conn,
        sql.SQL(
            "SELECT string_agg(int8send(meter_id) || timestamptz_send(ts) || int8send((value * 1000)::int8), "
            "''::bytea) FROM reading WHERE channel = {} AND ts > {} AND ts <= {} AND quality <> 'estimated' "
            "AND meter_id = ANY({}) GROUP BY meter_id"
        ).format(sql.Literal(VOLUME_CHANNEL), sql.Literal(since), sql.Literal(until), sql.Literal(meter_ids)),
        ["meter_id", "ts", "value_l"],
    ).with_columns((pl.col("ts") + PG_EPOCH_US).cast(TS))
    manual = load_manual_readings(conn, since, until, meter_ids)
    readings = pl.concat(
        [telemetry.select("meter_id", "ts", "value_l"), manual.select("meter_id", "ts", "value_l", "received_at")],
        how="diagonal_relaxed",
    )
    registers = pl.DataFrame(
        conn.execute(
            "SELECT m.id, coalesce(m.register_max, mm.register_max, %s)::text FROM meter m "
            "LEFT JOIN meter_model mm ON mm.id = m.model_id WHERE m.id = ANY(%s)",
            [DEFAULT_REGISTER_MAX, meter_ids],
        ).fetchall(),
        schema={"meter_id": pl.Int64, "register_max": pl.String},
        orient="row",
    ).with_columns(pl.col("register_max").cast(pl.Decimal(14, 3)))
    intervals, _ = intervals_litres(readings.lazy(), registers.lazy())
    counted = (
        intervals.filter(pl.col("prev_ts").is_not_null())
        .select("meter_id", "prev_ts", "ts", pl.col("use_l").fill_null(0))  # a reset's use is unknown: none
        .sort("meter_id", "ts")
        .with_columns(counted_l=pl.col("use_l").cum_sum().over("meter_id"))
        .sort("ts")
        .collect(engine="in-memory")
    )
    midnights = (
        pl.DataFrame({"meter_id": meter_ids})
        .join(pl.DataFrame({"day": pl.date_range(first, end, "1d", eager=True)}), how="cross")
        .with_columns(ts=pl.col("day").cast(pl.Datetime("us")).dt.replace_time_zone(tz).dt.convert_time_zone("UTC"))
        .sort("ts")
    )
    # the register (counted from the first reading) at each midnight: in the first interval ending at or
    # after it, interpolated by time; before the first reading nothing is counted, after the last everything
    elapsed = (pl.col("ts_right") - pl.col("ts")).dt.total_microseconds().cast(pl.Int128)
    length = (pl.col("ts_right") - pl.col("prev_ts")).dt.total_microseconds().cast(pl.Int128)
    left = (pl.col("use_l").cast(pl.Int128) * elapsed.clip(0, length) // length).cast(pl.Int64)
    last = counted.group_by("meter_id").agg(pl.col("counted_l").max().alias("last_l"))
    at_midnight = (
        midnights.join_asof(
            counted.rename({"ts": "ts_right"}),
            left_on="ts",
            right_on="ts_right",
            by="meter_id",
            strategy="forward",
            check_sortedness=False,  # sorted by time overall, hence within each meter
        )
        .join(last, on="meter_id", how="left")
        .with_columns(
            counted_l=pl.when(pl.col("ts_right").is_null())
            .then(pl.col("last_l"))
            .otherwise(pl.col("counted_l") - left)
            .fill_null(0)
        )
        .sort("meter_id", "day")
    )
    return (
        at_midnight.with_columns(use_l=pl.col("counted_l").shift(-1).over("meter_id") - pl.col("counted_l"))
        .filter(pl.col("day") < end)
        .join(meters, on="meter_id", how="inner")
        .group_by("account_id", "day")
        .agg(pl.col("use_l").sum())
        .select("account_id", "day", (pl.col("use_l").cast(VOLUME) / 1000).alias("consumption_m3"))
    )


@dataclass
class PricedRun:
    bills: pl.DataFrame  # account_id, period_start, period_end, usage_type_id, volume_l, amount_fen
    lines: pl.DataFrame  # account_id, line_no, line_kind, usage_type_id, charge_code, tier_no, …
    problems: pl.DataFrame


def compute(
    inputs: RunInputs,
    frames: TariffFrames,
    period_start: dt.date,
    config: PricingConfig,
    *,
    dated: pl.DataFrame | None = None,
    fast_path: bool = True,
) -> PricedRun:
    """Bills and their lines in integer units (litres, 1e-4 yuan, fen), accounts that cannot be priced left out."""
    return price_run(bill_items(inputs, frames, period_start), inputs, frames, config, dated=dated, fast_path=fast_path)


def price_run(
    items: pl.DataFrame,
    inputs: RunInputs,
    frames: TariffFrames,
    config: PricingConfig,
    *,
    dated: pl.DataFrame | None = None,
    fast_path: bool = True,
) -> PricedRun:
    """`compute` on the run's items (`bill_items`)."""
    plan = price_integers(items, frames, config, dated, fast_path=fast_path)
    lines, accounts, problems = pl.collect_all([plan.lines, plan.accounts, plan.problems], engine="in-memory")
    problems = problems.unique(maintain_order=True)
    if problems.height:
        bad = problems.select("account_id").unique()
        lines = lines.join(bad, on="account_id", how="anti", maintain_order="left")
        accounts = accounts.join(bad, on="account_id", how="anti")
    codes = dict(zip(inputs.usage_types["usage_type"], inputs.usage_types["usage_type_id"], strict=True))
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    line_frame = lines.select(
        "account_id",
        (row - run_first(row, run_start("account_id")) + 1).cast(pl.Int16).alias("line_no"),  # lines are in order
        pl.col("line_kind").cast(pl.String),
        pl.col("usage_type").replace_strict(codes, return_dtype=pl.Int64).alias("usage_type_id"),
        "charge_code",
        "tier_no",
        "price_period_start",
        "volume_l",
        "price_units",
        "amount_fen",
    )
    bill_frame = accounts.select(
        "account_id",
        pl.col("bill_start").alias("period_start"),
        pl.col("bill_end").alias("period_end"),
        pl.col("usage_type").replace_strict(codes, return_dtype=pl.Int64).alias("usage_type_id"),
        "volume_l",
        "amount_fen",
    ).sort("account_id")
    return PricedRun(bill_frame, line_frame, problems)


# ---- write ------------------------------------------------------------------------------------------------

BILL_COLUMNS = [
    pgcopy.Column("id", "int8"),
    pgcopy.Column("account_id", "int8"),
    pgcopy.Column("period", "text"),
    pgcopy.Column("period_start", "date"),
    pgcopy.Column("period_end", "date"),
    pgcopy.Column("usage_type_id", "int8"),
    pgcopy.Column("bill_run_id", "int8"),
    pgcopy.Column("volume_m3", "numeric", scale=3),
    pgcopy.Column("amount", "numeric", scale=2),
    pgcopy.Column("issued_on", "date"),
    pgcopy.Column("due_date", "date"),
]
LINE_COLUMNS = [
    pgcopy.Column("bill_id", "int8"),
    pgcopy.Column("line_no", "int2"),
    pgcopy.Column("line_kind", "text"),
    pgcopy.Column("usage_type_id", "int8"),
    pgcopy.Column("charge_code", "text"),
    pgcopy.Column("tier_no", "int4"),
    pgcopy.Column("price_period_start", "date"),
    pgcopy.Column("volume_m3", "numeric", scale=3),
    pgcopy.Column("unit_price", "numeric", scale=4, int_digits=8),
    pgcopy.Column("amount", "numeric", scale=2),
]
LEDGER_COLUMNS = [
    pgcopy.Column("account_id", "int8"),
    pgcopy.Column("entry_type", "text"),
    pgcopy.Column("amount", "numeric", scale=2),
    pgcopy.Column("booked_on", "date"),
    pgcopy.Column("bill_id", "int8"),
    pgcopy.Column("bill_run_id", "int8"),
    pgcopy.Column("actor", "text"),
]


def copy_rows(conn: psycopg.Connection[Any], table: str, columns: list[pgcopy.Column], data: Iterable[bytes]) -> None:
    """Binary COPY into `table` of `data` (`pgcopy.copy_chunks`)."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    )
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        for chunk in data:
            copy.write(chunk)


def reserve_bill_ids(conn: psycopg.Connection[Any], count: int) -> int:
    """First of `count` consecutive bill ids (the run that asks holds the EXCLUSIVE lock on bill, so that no
    other run takes ids meanwhile)."""
    row = conn.execute(
        "SELECT setval(pg_get_serial_sequence('bill', 'id'), nextval(pg_get_serial_sequence('bill', 'id')) + %s - 1)",
        [count],
    ).fetchone()
    assert row is not None
    return int(row[0]) - count + 1


@dataclass
class WriteBatch:
    """A step's bills, lines and ledger charges as binary COPY streams (table, columns, chunks), and totals."""

    streams: list[tuple[str, list[pgcopy.Column], list[bytes]]]
    bills: int
    volume_l: int
    amount_fen: int


def encode(
    priced: PricedRun,
    first_id: int,
    period: str,
    run_id: int,
    issued_on: dt.date,
    due_date: dt.date,
    actor: str,
) -> WriteBatch:
    """Bills with ids from `first_id` on (in account order), their lines and their ledger charges, encoded."""
    bills = priced.bills.with_columns(
        id=pl.int_range(first_id, first_id + pl.len(), dtype=pl.Int64),
        period=pl.lit(period),
        bill_run_id=pl.lit(run_id, pl.Int64),
        issued_on=pl.lit(issued_on),
        due_date=pl.lit(due_date),
        volume_m3=pl.col("volume_l"),
        amount=pl.col("amount_fen"),
    )
    # bills are in account order with consecutive ids: a line's bill is found by binary search
    position = bills.get_column("account_id").search_sorted(priced.lines.get_column("account_id"))
    lines = priced.lines.select(
        (position + first_id).cast(pl.Int64).alias("bill_id"),
        "line_no",
        "line_kind",
        "usage_type_id",
        "charge_code",
        "tier_no",
        "price_period_start",
        pl.col("volume_l").alias("volume_m3"),
        pl.col("price_units").alias("unit_price"),
        pl.col("amount_fen").alias("amount"),
    )
    charges = bills.filter(pl.col("amount_fen") != 0).select(
        "account_id",
        entry_type=pl.lit("charge"),
        amount=pl.col("amount_fen"),
        booked_on=pl.col("issued_on"),
        bill_id=pl.col("id"),
        bill_run_id=pl.col("bill_run_id"),
        actor=pl.lit(actor),
    )
    streams = [
        (table, columns, list(pgcopy.copy_chunks(frame.select(c.name for c in columns), columns)))
        for table, columns, frame in (
            ("bill", BILL_COLUMNS, bills),
            ("bill_line", LINE_COLUMNS, lines),
            ("ledger_entry", LEDGER_COLUMNS, charges),
        )
    ]
    return WriteBatch(streams, bills.height, int(bills["volume_l"].sum() or 0), int(bills["amount_fen"].sum() or 0))


def write(conn: psycopg.Connection[Any], batch: WriteBatch) -> None:
    """A step's bills, lines and ledger charges, in that order."""
    for table, columns, chunks in batch.streams:
        copy_rows(conn, table, columns, chunks)


def _summarize(store: Store, index: str) -> bool:
    """Summarize the new block ranges of a BRIN index on a connection of its own; False if that failed."""
    try:
        with store.connection() as side:
            side.execute("SELECT brin_summarize_new_values(%s::regclass)", [index])
            side.commit()
    except psycopg.Error:
        log.warning("summarizing %s on a side connection failed; the run summarizes it itself", index, exc_info=True)
        return False
    return True


# ---- the run ----------------------------------------------------------------------------------------------

STEP_ACCOUNTS = 150_000  # accounts per step of a run
RUN_CONNECTIONS = 3  # the run's transaction, the step being loaded, the index being summarized
STEP_GROWTH = 1.4  # the first steps of a run grow by this factor up to STEP_ACCOUNTS (see `account_ranges`)


def account_ranges(conn: psycopg.Connection[Any], scope: Scope, size: int | None = None) -> list[AccountRange | None]:
    """Ranges of account ids that cut the accounts into steps of up to `size` (default `STEP_ACCOUNTS`; None:
    all in one step), by the spread of the ids. The first steps are small and grow by `STEP_GROWTH`: the first
    write starts early, and each step is priced while the one before it, smaller but slower to write than to
    price, is written."""
    size = size or STEP_ACCOUNTS
    if scope.kind == "account":
        return [None]
    row = conn.execute("SELECT min(id), max(id), count(*) FROM account").fetchone()
    assert row is not None
    low, high, count = row
    if count <= size:
        return [None]
    sizes: list[int] = []
    step = max(size // 8, 1)
    while sum(sizes) < count:
        sizes.append(step)
        step = min(size, int(step * STEP_GROWTH) + 1)
    span = high - low + 1
    bounds = sorted({low + span * done // count for done in accumulate([0, *sizes]) if done < count} | {high + 1})
    return list(pairwise(bounds))


@dataclass
class _Step:
    priced: PricedRun
    seconds: dict[str, float]
    batch: WriteBatch | None  # None: nothing to bill


@dataclass(frozen=True)
class _BillFields:
    """What every bill and ledger charge of a run carries."""

    period: str
    run_id: int
    issued_on: dt.date
    due_date: dt.date
    actor: str


def _prepare(
    store: Store,
    period: str,
    scope: Scope,
    accounts: AccountRange | None,
    shared: Future[RunShared],
    frames: TariffFrames,
    config: PricingConfig,
    bill: _BillFields,
) -> _Step:
    """Load, price and encode one step of a run, on a connection of its own (which also reserves the step's
    bill ids: steps run one after the other, in account order)."""
    period_start, _ = period_bounds(period)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    with store.connection() as side, side.transaction():
        _tune(side)
        inputs = load_inputs(side, period, scope, accounts, shared, frames)
        seconds["load"] = time.perf_counter() - clock
        clock = time.perf_counter()
        items = bill_items(inputs, frames, period_start)
        seconds["compute"] = time.perf_counter() - clock
        clock = time.perf_counter()
        dated = load_dated(store, side, inputs, items, frames, config)
        seconds["load"] += time.perf_counter() - clock
    clock = time.perf_counter()
    priced = price_run(items, inputs, frames, config, dated=dated)
    seconds["compute"] += time.perf_counter() - clock
    if not priced.bills.height:
        return _Step(priced, seconds, None)
    clock = time.perf_counter()
    with store.connection() as side:
        first_id = reserve_bill_ids(side, priced.bills.height)
        side.commit()
    batch = encode(priced, first_id, bill.period, bill.run_id, bill.issued_on, bill.due_date, bill.actor)
    seconds["encode"] = time.perf_counter() - clock
    return _Step(priced, seconds, batch)


def _tune(conn: psycopg.Connection[Any]) -> None:
    """Settings of a run's transactions: a few big queries, for which JIT compiling costs more than it saves,
    whose hashes and sorts fit in memory, and which leave the other core to the run's other work rather than
    to parallel workers."""
    conn.execute("SET LOCAL jit = off")
    conn.execute("SET LOCAL work_mem = '256MB'")
    conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")


def _scope_summary(conn: psycopg.Connection[Any], period: str, scope: Scope) -> tuple[int, Decimal]:
    query = sql.SQL("SELECT count(*), coalesce(sum(amount), 0) FROM bill WHERE period = {} {}").format(
        sql.Literal(period), _accounts_filter("account_id", scope, None)
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), Decimal(row[1])


def run_bills(
    store: Store,
    period: str,
    scope: Scope | str | None = None,
    actor: str = "system",
    issued_on: dt.date | None = None,
    due_days: int = DEFAULT_DUE_DAYS,
    config: PricingConfig | None = None,
) -> BillRunResult:
    """Bill every account in scope that has approved consumption for `period` and no bill for it yet.

    The run's transaction takes the lock, then writes; the accounts go in steps of account-id ranges, each
    loaded and priced on another connection of the store while the run writes the step before, so that the
    database writes while polars prices. The steps read committed data only (the master data, readings and
    earlier bills the run does not change; other runs wait for the lock), and a step's accounts are billed
    by that step alone, so the bills are the same as in one step.
    """
    scope = scope if isinstance(scope, Scope) else Scope.parse(scope)
    period_bounds(period)
    if store.settings.database.pool_max < RUN_CONNECTIONS:
        raise BillRunError(f"a bill run needs {RUN_CONNECTIONS} connections: set database.pool_max to at least that")
    issued_on = issued_on or dt.date.today()
    due_date = issued_on + dt.timedelta(days=due_days)
    config = config or PricingConfig()
    started = dt.datetime.now(dt.UTC)
    seconds = {"load": 0.0, "compute": 0.0, "encode": 0.0, "write": 0.0}
    wall = time.perf_counter()
    problems: list[pl.DataFrame] = []
    run_id: int | None = None
    created, volume_l, amount_fen = 0, 0, 0
    try:
        with (
            store.transaction(actor=actor) as conn,
            ThreadPoolExecutor(1, thread_name_prefix="bill-run-step") as steps,
            ThreadPoolExecutor(1, thread_name_prefix="bill-run-brin") as summaries,
        ):
            clock = time.perf_counter()
            conn.execute("LOCK TABLE bill IN EXCLUSIVE MODE")
            _tune(conn)
            frames = load_store_tariffs(conn)
            ranges = account_ranges(conn, scope)
            before, amount_before = _scope_summary(conn, period, scope)
            # the run's row is written at the end, when it is known to have billed something, with this id
            row = conn.execute("SELECT nextval(pg_get_serial_sequence('bill_run', 'id'))").fetchone()
            assert row is not None
            fields = _BillFields(period, int(row[0]), issued_on, due_date, actor)
            # the first step loads its readings and accounts while this reads the customers and meters of all
            shared: Future[RunShared] = Future()
            pending = steps.submit(_prepare, store, period, scope, ranges[0], shared, frames, config, fields)
            try:
                shared.set_result(load_shared(conn, period, scope))
            except BaseException as exc:
                shared.set_exception(exc)
                raise
            seconds["load"] += time.perf_counter() - clock
            summarized: list[Future[bool]] = []
            for index in range(len(ranges)):
                step = pending.result()
                if index + 1 < len(ranges):
                    pending = steps.submit(
                        _prepare, store, period, scope, ranges[index + 1], shared, frames, config, fields
                    )
                for name, spent in step.seconds.items():
                    seconds[name] += spent
                problems.append(step.priced.problems)
                if step.batch is None:
                    continue
                clock = time.perf_counter()
                run_id = fields.run_id
                write(conn, step.batch)
                # The block range index of bill_line (0018) knows new pages only once they are summarized (until
                # then every look-up scans them): on another connection, while the run goes on (summaries read
                # uncommitted rows too; those of a run that fails only widen them).
                summarized.append(summaries.submit(_summarize, store, "bill_line_bill_idx"))
                created += step.batch.bills
                volume_l += step.batch.volume_l
                amount_fen += step.batch.amount_fen
                seconds["write"] += time.perf_counter() - clock
            all_problems = pl.concat(problems) if problems else pl.DataFrame()
            amount_created = Decimal(amount_fen).scaleb(-2)
            if run_id is not None:
                clock = time.perf_counter()
                if not all(future.result() for future in summarized):
                    conn.execute("SELECT brin_summarize_new_values('bill_line_bill_idx')")
                conn.execute("SELECT brin_summarize_new_values('bill_run_idx')")  # bill is locked to others
                conn.execute(
                    "INSERT INTO bill_run (id, period, scope, started_by, started_at, status, bills_created, "
                    "volume_m3, amount, problems, problem_sample) OVERRIDING SYSTEM VALUE "
                    "VALUES (%s, %s, %s, %s, %s, 'committed', %s, %s, %s, %s, %s)",
                    [
                        run_id,
                        period,
                        str(scope),
                        actor,
                        started,
                        created,
                        Decimal(volume_l).scaleb(-3),
                        amount_created,
                        all_problems.select("account_id").n_unique() if all_problems.height else 0,
                        Jsonb(all_problems.head(20).to_dicts()),
                    ],
                )
                seconds["write"] += time.perf_counter() - clock
        seconds["total"] = time.perf_counter() - wall
    except Exception as exc:
        _record_failure(store, period, scope, actor, started, exc)
        raise
    log.info("bill run %s %s: %d bills created, %d problems", period, scope, created, all_problems.height)
    return BillRunResult(
        period,
        str(scope),
        run_id,
        created,
        amount_created,
        before + created,
        amount_before + amount_created,
        all_problems,
        seconds,
    )


def _record_failure(store: Store, period: str, scope: Scope, actor: str, started: dt.datetime, exc: Exception) -> None:
    """A failed run leaves no bills; its failure is recorded in a transaction of its own (best effort)."""
    if isinstance(exc, BillRunError):
        return
    try:
        with store.transaction(actor=actor) as conn:
            conn.execute(
                "INSERT INTO bill_run (period, scope, started_by, started_at, status, error) "
                "VALUES (%s, %s, %s, %s, 'failed', %s)",
                [period, str(scope), actor, started, f"{type(exc).__name__}: {exc}"[:2000]],
            )
    except Exception:
        log.exception("could not record the failed bill run")


def run_problems_text(problems: pl.DataFrame, limit: int = 10) -> Iterator[str]:
    """Readable lines about accounts left unbilled."""
    for row in problems.head(limit).iter_rows(named=True):
        yield f"account {row['account_id']} ({row['usage_type']}): {row['reason']}"
