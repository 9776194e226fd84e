"""Bill runs: approved consumption of a period → priced bills, bill lines and ledger charges, in one transaction.

The run holds an EXCLUSIVE lock on `bill` from its first read to its commit, so concurrent runs take turns.
Accounts already billed for the period are left out before pricing; with the unique (account, period) key
this makes a run idempotent: a second run of the same period and scope writes nothing and reports the
same bills. Everything (run row, bills, lines, ledger charges) is written with binary COPY in the run's
transaction, so a run that fails or is killed leaves nothing.

Inputs, each loaded with one query:
- `approved_consumption` of the period for the accounts in scope (prepaid-meter accounts are billed by
  their meters, not here); an account's meters are summed per usage type (the meter's, else the account's);
- tariffs (`tariff.definition`), the household size of the customer, billing-mode switches
  (`account_billing_mode`, the consumption of an item cut at a switch is split by days), quotas
  (`account_quota`, 一表多价);
- tier volume already used in the cycle: the energy volume of earlier bills of the account and usage type
  whose period starts inside the cycle holding this period's start.
Accounts that cannot be priced are left unbilled and reported (`problems`), never half-billed.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import polars as pl
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from billing import pgcopy
from billing.pricing import PricingConfig, cycle_start_of, price_lazy, prorated, with_stable_index
from billing.quotas import split_by_quotas
from billing.rounding import MONEY, VOLUME, m3_to_litres
from billing.tariff import TariffFrames, load_tariffs, tariff_frames
from meterhub.store import Store

log = logging.getLogger(__name__)

ScopeKind = Literal["all", "area", "book", "account"]
DEFAULT_DUE_DAYS = 15


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
    seconds: dict[str, float] = field(default_factory=dict)  # load / compute / write


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


def load_store_tariffs(conn: psycopg.Connection[Any]) -> TariffFrames:
    """All tariffs of the store as pricing frames (keyed by usage type code)."""
    rows = conn.execute("SELECT u.code, t.definition FROM tariff t JOIN usage_type u ON u.id = t.usage_type_id")
    return tariff_frames(load_tariffs(dict(rows.fetchall())).values())


@dataclass
class RunInputs:
    consumption: pl.DataFrame  # account_id, usage_type, main_usage_type, period_start, period_end, consumption_m3, …
    modes: pl.DataFrame  # account_id, effective_from, billing_mode
    quotas: pl.DataFrame  # account_id, usage_type, quota_m3, share_pct, priority
    used: pl.DataFrame  # account_id, usage_type, bill_start, volume_m3 of earlier bills
    usage_types: pl.DataFrame  # usage_type_id, usage_type (code)


def load_inputs(conn: psycopg.Connection[Any], period: str, scope: Scope) -> RunInputs:
    start, _ = period_bounds(period)
    accounts = scope_accounts_sql(scope)
    lit_period = sql.Literal(period)
    consumption = copy_out(
        conn,
        sql.SQL(
            "SELECT c.account_id, coalesce(m.usage_type_id, a.usage_type_id), a.usage_type_id, "
            "min(c.period_start), max(c.period_end), sum(c.consumption_m3), min(cu.household_size) "
            "FROM approved_consumption c JOIN account a ON a.id = c.account_id "
            "JOIN customer cu ON cu.id = a.customer_id JOIN meter m ON m.id = c.meter_id "
            "WHERE c.period = {period} AND a.billing_mode <> 'prepaid_meter' AND c.account_id IN ({accounts}) "
            "AND NOT EXISTS (SELECT 1 FROM bill b WHERE b.account_id = c.account_id AND b.period = {period}) "
            "GROUP BY 1, 2, 3"
        ).format(period=lit_period, accounts=accounts),
        {
            "account_id": pl.Int64,
            "usage_type_id": pl.Int64,
            "main_usage_type_id": pl.Int64,
            "period_start": pl.Date,
            "period_end": pl.Date,
            "consumption_m3": VOLUME,
            "household_size": pl.Int32,
        },
    )
    modes = copy_out(
        conn,
        sql.SQL(
            "SELECT account_id, effective_from, billing_mode FROM account_billing_mode WHERE account_id IN ({})"
        ).format(accounts),
        {"account_id": pl.Int64, "effective_from": pl.Date, "billing_mode": pl.String},
    )
    quotas = copy_out(
        conn,
        sql.SQL(
            "SELECT account_id, usage_type_id, quota_m3, share_pct, priority FROM account_quota "
            "WHERE account_id IN ({}) ORDER BY account_id, priority, usage_type_id"
        ).format(accounts),
        {
            "account_id": pl.Int64,
            "usage_type_id": pl.Int64,
            "quota_m3": VOLUME,
            "share_pct": pl.Decimal(38, 2),
            "priority": pl.Int32,
        },
    )
    used = copy_out(
        conn,
        sql.SQL(
            "SELECT b.account_id, l.usage_type_id, b.period_start, sum(l.volume_m3) FROM bill b "
            "JOIN bill_line l ON l.bill_id = b.id WHERE l.line_kind = 'energy' "
            "AND b.period_start >= {low} AND b.period_start < {start} AND b.period <> {period} "
            "AND b.account_id IN ({accounts}) GROUP BY 1, 2, 3"
        ).format(
            low=sql.Literal(start - dt.timedelta(days=366)),
            start=sql.Literal(start),
            period=lit_period,
            accounts=accounts,
        ),
        {"account_id": pl.Int64, "usage_type_id": pl.Int64, "bill_start": pl.Date, "volume_m3": VOLUME},
    )
    usage_types = pl.DataFrame(
        conn.execute("SELECT id, code FROM usage_type").fetchall(),
        schema={"usage_type_id": pl.Int64, "usage_type": pl.String},
        orient="row",
    )
    return RunInputs(consumption, modes, quotas, used, usage_types)


# ---- compute ----------------------------------------------------------------------------------------------


def _with_codes(frame: pl.LazyFrame, usage_types: pl.DataFrame, id_column: str, code_column: str) -> pl.LazyFrame:
    codes = usage_types.lazy().select(pl.col("usage_type_id").alias(id_column), pl.col("usage_type").alias(code_column))
    return frame.join(codes, on=id_column, how="left", maintain_order="left")


def cycle_used(inputs: RunInputs, frames: TariffFrames, period_start: dt.date) -> pl.LazyFrame:
    """account_id, usage_type, cycle_used_m3: earlier bills that start inside the cycle holding `period_start`."""
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
        .agg(pl.col("volume_m3").sum().cast(VOLUME).alias("cycle_used_m3"))
    )


def cut_at_mode_switches(items: pl.LazyFrame, modes: pl.DataFrame) -> pl.LazyFrame:
    """Items with `billing_mode`, cut where the account's mode changes inside the item (volume split by days)."""
    if modes.is_empty():
        return items.with_columns(billing_mode=pl.lit("tiered"))
    with_index = with_stable_index(items, "_item")  # bounds, starts and pieces join back on _item
    switches = modes.lazy().sort("account_id", "effective_from")
    bounds = (
        with_index.select("_item", "account_id", "period_start", "period_end")
        .join(switches, on="account_id", how="inner")
        .filter((pl.col("effective_from") > pl.col("period_start")) & (pl.col("effective_from") < pl.col("period_end")))
        .select("_item", pl.col("effective_from").alias("cut"))
    )
    starts = pl.concat([with_index.select("_item", pl.col("period_start").alias("cut")), bounds]).unique()
    pieces = (
        starts.join(with_index, on="_item")
        .sort("_item", "cut")
        .with_columns(piece_end=pl.col("cut").shift(-1).over("_item").fill_null(pl.col("period_end")))
        .with_columns(days=(pl.col("piece_end") - pl.col("cut")).dt.total_days())
        .with_columns(
            before=(pl.col("days").cum_sum() - pl.col("days")).over("_item"),
            total=pl.col("days").sum().over("_item"),
        )
        .with_columns(
            consumption_m3=prorated(
                m3_to_litres(pl.col("consumption_m3")), pl.col("before"), pl.col("days"), pl.col("total")
            ).cast(VOLUME)
            / 1000,
            period_start=pl.col("cut"),
            period_end=pl.col("piece_end"),
        )
        .sort("cut")
    )
    mode_at = pieces.join_asof(
        switches.select("account_id", pl.col("effective_from").alias("cut"), "billing_mode"),
        on="cut",
        by="account_id",
        strategy="backward",
        check_sortedness=False,  # sorted by "cut" overall, hence within each account
    )
    columns = items.collect_schema().names()
    return mode_at.sort("_item", "cut").select(*columns, pl.col("billing_mode").fill_null("tiered"))


def bill_items(inputs: RunInputs, frames: TariffFrames, period_start: dt.date) -> pl.LazyFrame:
    """Pricing items of the run: consumption with cycle volume used, quotas split off, mode switches cut."""
    used = cycle_used(inputs, frames, period_start)
    consumption = _with_codes(inputs.consumption.lazy(), inputs.usage_types, "usage_type_id", "usage_type")
    items = consumption.select(
        "account_id", "usage_type", "period_start", "period_end", "consumption_m3", "household_size"
    ).join(used, on=["account_id", "usage_type"], how="left")
    items = items.with_columns(pl.col("cycle_used_m3").fill_null(pl.lit(0, VOLUME)))
    if inputs.quotas.height:
        # row order breaks ties of priority in split_by_quotas: keep the loaded order
        quotas = _with_codes(inputs.quotas.lazy(), inputs.usage_types, "usage_type_id", "usage_type").join(
            used, on=["account_id", "usage_type"], how="left", maintain_order="left"
        )
        quotas = quotas.select(
            "account_id",
            "usage_type",
            "quota_m3",
            "share_pct",
            "priority",
            pl.col("cycle_used_m3").fill_null(pl.lit(0, VOLUME)),
        )
        items = split_by_quotas(items, quotas)
    return cut_at_mode_switches(items, inputs.modes)


@dataclass
class PricedRun:
    bills: pl.DataFrame  # account_id, period_start, period_end, usage_type_id, volume_l, amount_fen
    lines: pl.DataFrame  # account_id, line_no, line_kind, usage_type_id, charge_code, tier_no, …
    problems: pl.DataFrame


def compute(inputs: RunInputs, frames: TariffFrames, period_start: dt.date, config: PricingConfig) -> PricedRun:
    items = bill_items(inputs, frames, period_start)
    plan = price_lazy(items, frames, config)
    lines, problems = pl.collect_all([plan.lines, plan.problems])
    problems = problems.unique(maintain_order=True)
    bad = problems.select("account_id").unique()
    lines = lines.join(bad, on="account_id", how="anti", maintain_order="left")
    spans = (
        inputs.consumption.lazy()
        .group_by("account_id")
        .agg(pl.col("period_start").min(), pl.col("period_end").max(), pl.col("main_usage_type_id").first())
    )
    codes = inputs.usage_types.lazy()
    line_rows = (
        lines.lazy()
        .join(codes, on="usage_type", how="left", maintain_order="left")
        .with_columns(line_no=pl.int_range(pl.len()).over("account_id").cast(pl.Int16) + 1)
        .select(
            "account_id",
            "line_no",
            pl.col("line_kind").cast(pl.String),
            "usage_type_id",
            "charge_code",
            "tier_no",
            "price_period_start",
            m3_to_litres(pl.col("volume_m3")).alias("volume_l"),
            (pl.col("unit_price").cast(pl.Decimal(38, 4)) * 10_000).cast(pl.Int64).alias("price_units"),
            (pl.col("amount").cast(MONEY) * 100).cast(pl.Int64).alias("amount_fen"),
        )
    )
    bills = (
        spans.join(inputs.consumption.lazy().select("account_id").unique(), on="account_id")
        .join(bad.lazy(), on="account_id", how="anti")
        .join(
            line_rows.group_by("account_id").agg(
                pl.col("volume_l").sum().alias("volume_l"), pl.col("amount_fen").sum().alias("amount_fen")
            ),
            on="account_id",
            how="left",
        )
        .select(
            "account_id",
            "period_start",
            "period_end",
            pl.col("main_usage_type_id").alias("usage_type_id"),
            pl.col("volume_l").fill_null(0),
            pl.col("amount_fen").fill_null(0),
        )
        .sort("account_id")
    )
    bill_frame, line_frame = pl.collect_all([bills, line_rows])
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


def copy_rows(conn: psycopg.Connection[Any], table: str, columns: list[pgcopy.Column], frame: pl.DataFrame) -> None:
    """Binary COPY of `frame` into `table`."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    )
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        for chunk in pgcopy.copy_chunks(frame.select(c.name for c in columns), columns):
            copy.write(chunk)


def _reserve_bill_ids(conn: psycopg.Connection[Any], count: int) -> int:
    """First of `count` consecutive bill ids (the caller holds the EXCLUSIVE lock on bill)."""
    row = conn.execute(
        "SELECT setval(pg_get_serial_sequence('bill', 'id'), nextval(pg_get_serial_sequence('bill', 'id')) + %s - 1)",
        [count],
    ).fetchone()
    assert row is not None
    return int(row[0]) - count + 1


def write(
    conn: psycopg.Connection[Any],
    priced: PricedRun,
    period: str,
    run_id: int,
    issued_on: dt.date,
    due_date: dt.date,
    actor: str,
) -> None:
    first = _reserve_bill_ids(conn, priced.bills.height)
    bills = priced.bills.with_columns(
        id=pl.int_range(first, first + pl.len(), dtype=pl.Int64),
        period=pl.lit(period),
        bill_run_id=pl.lit(run_id, pl.Int64),
        issued_on=pl.lit(issued_on),
        due_date=pl.lit(due_date),
        volume_m3=pl.col("volume_l"),
        amount=pl.col("amount_fen"),
    )
    copy_rows(conn, "bill", BILL_COLUMNS, bills)
    ids = bills.select("account_id", pl.col("id").alias("bill_id"))
    lines = priced.lines.join(ids, on="account_id").rename(
        {"volume_l": "volume_m3", "price_units": "unit_price", "amount_fen": "amount"}
    )
    copy_rows(conn, "bill_line", LINE_COLUMNS, lines)
    charges = bills.filter(pl.col("amount_fen") != 0).select(
        "account_id",
        entry_type=pl.lit("charge"),
        amount=pl.col("amount_fen"),
        booked_on=pl.col("issued_on"),
        bill_id=pl.col("id"),
        bill_run_id=pl.col("bill_run_id"),
        actor=pl.lit(actor),
    )
    copy_rows(conn, "ledger_entry", LEDGER_COLUMNS, charges)


# ---- the run ----------------------------------------------------------------------------------------------


def _scope_summary(conn: psycopg.Connection[Any], period: str, scope: Scope) -> tuple[int, Decimal]:
    query = sql.SQL("SELECT count(*), coalesce(sum(amount), 0) FROM bill WHERE period = {} AND account_id IN ({})")
    row = conn.execute(query.format(sql.Literal(period), scope_accounts_sql(scope))).fetchone()
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
    """Bill every account in scope that has approved consumption for `period` and no bill for it yet."""
    scope = scope if isinstance(scope, Scope) else Scope.parse(scope)
    period_start, _ = period_bounds(period)
    issued_on = issued_on or dt.date.today()
    config = config or PricingConfig()
    started = dt.datetime.now(dt.UTC)
    seconds: dict[str, float] = {}
    try:
        with store.transaction(actor=actor) as conn:
            clock = time.perf_counter()
            conn.execute("LOCK TABLE bill IN EXCLUSIVE MODE")
            frames = load_store_tariffs(conn)
            inputs = load_inputs(conn, period, scope)
            seconds["load"] = time.perf_counter() - clock

            clock = time.perf_counter()
            priced = compute(inputs, frames, period_start, config)
            seconds["compute"] = time.perf_counter() - clock

            clock = time.perf_counter()
            run_id: int | None = None
            created, amount_created = priced.bills.height, Decimal(0)
            if created:
                amount_created = Decimal(int(priced.bills["amount_fen"].sum())).scaleb(-2)
                volume = Decimal(int(priced.bills["volume_l"].sum())).scaleb(-3)
                sample = priced.problems.head(20).to_dicts()
                row = conn.execute(
                    "INSERT INTO bill_run (period, scope, started_by, started_at, status, bills_created, volume_m3, "
                    "amount, problems, problem_sample) VALUES (%s, %s, %s, %s, 'committed', %s, %s, %s, %s, %s) "
                    "RETURNING id",
                    [
                        period,
                        str(scope),
                        actor,
                        started,
                        created,
                        volume,
                        amount_created,
                        priced.problems.select("account_id").n_unique(),
                        Jsonb(sample),
                    ],
                ).fetchone()
                assert row is not None
                run_id = int(row[0])
                write(conn, priced, period, run_id, issued_on, issued_on + dt.timedelta(days=due_days), actor)
            bills, amount = _scope_summary(conn, period, scope)
        seconds["write"] = time.perf_counter() - clock
    except Exception as exc:
        _record_failure(store, period, scope, actor, started, exc)
        raise
    log.info("bill run %s %s: %d bills created, %d problems", period, scope, created, priced.problems.height)
    return BillRunResult(period, str(scope), run_id, created, amount_created, bills, amount, priced.problems, seconds)


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
