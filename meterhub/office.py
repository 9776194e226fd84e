"""Office (办公管理): documents with versions, work plans, news for the home page, internal messages.

- A document has a title, tags and versions; every upload is a new version kept for good (bytes in the
  database, at most MAX_DOCUMENT_BYTES each). Search looks at titles, tags, descriptions, file names and the
  text of plain-text versions (read once at upload; other formats are found by their title and tags).
- A work plan has an owner (a staff user), a start and a due date and a status.
- News is written, then published (shown on everyone's home page) or withdrawn.
- A message goes to one user or to every active user of a role; each recipient has their own read mark.
  Anyone signed in reads their own inbox and sent messages, no one else's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
MAX_TEXT_CHARS = 200_000
PLAN_STATUSES = ("planned", "in_progress", "done", "cancelled")
TEXT_SUFFIXES = (".txt", ".csv", ".md", ".json", ".xml", ".html", ".htm", ".log", ".ini", ".toml", ".yaml", ".yml")


class OfficeError(ValueError):
    """A refused action: `code` for programs, `field` names the input at fault."""

    def __init__(self, code: str, message: str, field: str = "", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status


def like(text: str) -> str:
    """`text` as a pattern matching any value that contains it (its % and _ taken literally)."""
    escaped = text.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _title(text: str, field: str = "title", limit: int = 200) -> str:
    value = (text or "").strip()
    if not value:
        raise OfficeError("required", "this field is required", field)
    if len(value) > limit:
        raise OfficeError("too_long", f"at most {limit} characters", field)
    return value


def parse_tags(text: str | Iterable[str]) -> list[str]:
    """Tags from text separated by commas, semicolons or spaces (Chinese punctuation too), each once."""
    parts = re.split(r"[,;，；、\s]+", text) if isinstance(text, str) else list(text)
    tags: list[str] = []
    for part in parts:
        tag = part.strip()[:40]
        if tag and tag not in tags:
            tags.append(tag)
    if len(tags) > 20:
        raise OfficeError("too_many_tags", "at most 20 tags", "tags")
    return tags


# -- documents --------------------------------------------------------------------------------------------
def extract_text(filename: str, content_type: str, data: bytes) -> str:
    """The text of a plain-text file (UTF-8, else GB18030) for search; other files give ''."""
    if not (content_type.startswith("text/") or filename.lower().endswith(TEXT_SUFFIXES)):
        return ""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding).replace("\x00", "")[:MAX_TEXT_CHARS]
        except UnicodeDecodeError:
            continue
    return ""


def _check_file(filename: str, data: bytes) -> str:
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name:
        raise OfficeError("required", "choose a file", "file")
    if len(name) > 255:
        raise OfficeError("too_long", "a file name of at most 255 characters", "file")
    if not data:
        raise OfficeError("empty_file", "the file is empty", "file")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise OfficeError(
            "too_large", f"a file may have at most {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB", "file", 413
        )
    return name


def _insert_version(
    conn: psycopg.Connection[Any],
    document_id: int,
    filename: str,
    content_type: str,
    data: bytes,
    note: str,
    actor: str,
) -> int:
    name = _check_file(filename, data)
    kind = (content_type or "application/octet-stream").split(";")[0].strip()[:100] or "application/octet-stream"
    row = conn.execute(
        "UPDATE office_document SET current_version = current_version + 1, updated_at = now() WHERE id = %s "
        "RETURNING current_version",
        [document_id],
    ).fetchone()
    if row is None:
        raise OfficeError("not_found", f"no document {document_id}", status=404)
    version = int(row[0])
    conn.execute(
        """INSERT INTO office_document_version (document_id, version, filename, content_type, size_bytes, sha256,
                                                content, text_content, note, uploaded_by)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        [
            document_id,
            version,
            name,
            kind,
            len(data),
            hashlib.sha256(data).hexdigest(),
            data,
            extract_text(name, kind, data),
            (note or "").strip()[:500],
            actor,
        ],
    )
    return version


def add_document(
    conn: psycopg.Connection[Any],
    *,
    title: str,
    tags: str | Iterable[str],
    description: str,
    filename: str,
    content_type: str,
    data: bytes,
    actor: str,
    note: str = "",
) -> int:
    """A new document with its first version; returns its id."""
    checked_title = _title(title)
    checked_tags = parse_tags(tags)
    _check_file(filename, data)
    row = conn.execute(
        "INSERT INTO office_document (title, tags, description, created_by) VALUES (%s, %s, %s, %s) RETURNING id",
        [checked_title, checked_tags, (description or "").strip()[:2000], actor],
    ).fetchone()
    assert row is not None
    _insert_version(conn, int(row[0]), filename, content_type, data, note, actor)
    return int(row[0])


def add_version(
    conn: psycopg.Connection[Any],
    document_id: int,
    *,
    filename: str,
    content_type: str,
    data: bytes,
    actor: str,
    note: str = "",
) -> int:
    """A new version of a document; returns its number."""
    return _insert_version(conn, document_id, filename, content_type, data, note, actor)


def edit_document(
    conn: psycopg.Connection[Any], document_id: int, *, title: str, tags: str | Iterable[str], description: str
) -> None:
    row = conn.execute(
        "UPDATE office_document SET title = %s, tags = %s, description = %s, updated_at = now() WHERE id = %s "
        "RETURNING id",
        [_title(title), parse_tags(tags), (description or "").strip()[:2000], document_id],
    ).fetchone()
    if row is None:
        raise OfficeError("not_found", f"no document {document_id}", status=404)


@dataclass(frozen=True)
class DocumentRow:
    id: int
    title: str
    tags: list[str]
    description: str
    current_version: int
    filename: str
    size_bytes: int
    created_by: str
    updated_at: dt.datetime


@dataclass(frozen=True)
class Version:
    version: int
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    note: str
    uploaded_by: str
    uploaded_at: dt.datetime


def search_documents(
    conn: psycopg.Connection[Any], q: str = "", tag: str = "", limit: int = 50, offset: int = 0
) -> list[DocumentRow]:
    """Documents whose title, tags, description, file names or plain text contain `q`, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT d.id, d.title, d.tags, d.description, d.current_version, v.filename, v.size_bytes,
                      d.created_by, d.updated_at
                 FROM office_document d
                 JOIN office_document_version v ON v.document_id = d.id AND v.version = d.current_version
                WHERE (%(tag)s = '' OR %(tag)s = ANY(d.tags))
                  AND (%(q)s = '%%%%' OR d.title ILIKE %(q)s OR d.description ILIKE %(q)s
                       OR array_to_string(d.tags, ' ') ILIKE %(q)s
                       OR EXISTS (SELECT 1 FROM office_document_version s WHERE s.document_id = d.id
                                     AND (s.filename ILIKE %(q)s OR s.text_content ILIKE %(q)s)))
                ORDER BY d.updated_at DESC, d.id DESC LIMIT %(limit)s OFFSET %(offset)s""",
            {"q": like(q), "tag": tag.strip(), "limit": limit, "offset": offset},
        ).fetchall()
    return [DocumentRow(**r) for r in rows]


def all_tags(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT unnest(tags) AS t FROM office_document ORDER BY t")]


def get_document(conn: psycopg.Connection[Any], document_id: int) -> tuple[DocumentRow, list[Version]]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """SELECT d.id, d.title, d.tags, d.description, d.current_version, v.filename, v.size_bytes,
                      d.created_by, d.updated_at
                 FROM office_document d
                 JOIN office_document_version v ON v.document_id = d.id AND v.version = d.current_version
                WHERE d.id = %s""",
            [document_id],
        ).fetchone()
        if row is None:
            raise OfficeError("not_found", f"no document {document_id}", status=404)
        versions = cur.execute(
            """SELECT version, filename, content_type, size_bytes, sha256, note, uploaded_by, uploaded_at
                 FROM office_document_version WHERE document_id = %s ORDER BY version DESC""",
            [document_id],
        ).fetchall()
    return DocumentRow(**row), [Version(**v) for v in versions]


def version_content(conn: psycopg.Connection[Any], document_id: int, version: int | None) -> tuple[str, str, bytes]:
    """(file name, content type, bytes) of a version (None: the current one)."""
    row = conn.execute(
        """SELECT v.filename, v.content_type, v.content FROM office_document_version v
             JOIN office_document d ON d.id = v.document_id
            WHERE v.document_id = %s AND v.version = coalesce(%s, d.current_version)""",
        [document_id, version],
    ).fetchone()
    if row is None:
        raise OfficeError("not_found", f"no version {version} of document {document_id}", status=404)
    return str(row[0]), str(row[1]), bytes(row[2])


# -- work plans ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    id: int
    title: str
    description: str
    owner_id: int
    owner: str
    owner_name: str
    starts_on: dt.date
    due_on: dt.date
    status: str
    created_by: str
    updated_at: dt.datetime


def _user_id(conn: psycopg.Connection[Any], username: str, field: str) -> int:
    row = conn.execute(
        "SELECT id FROM staff_user WHERE lower(username) = lower(%s) AND active", [(username or "").strip()]
    ).fetchone()
    if row is None:
        raise OfficeError("unknown_user", f"no active user {username!r}", field)
    return int(row[0])


def _date(text: str | dt.date, field: str) -> dt.date:
    if isinstance(text, dt.date):
        return text
    try:
        return dt.date.fromisoformat((text or "").strip())
    except ValueError:
        raise OfficeError("bad_date", "a date as YYYY-MM-DD", field) from None


def save_plan(
    conn: psycopg.Connection[Any],
    plan_id: int | None,
    *,
    title: str,
    description: str,
    owner: str,
    starts_on: str | dt.date,
    due_on: str | dt.date,
    status: str,
    actor: str,
) -> int:
    """Create (plan_id None) or change a work plan; returns its id."""
    values = {
        "title": _title(title),
        "description": (description or "").strip()[:4000],
        "owner": _user_id(conn, owner, "owner"),
        "starts": _date(starts_on, "starts_on"),
        "due": _date(due_on, "due_on"),
        "status": status,
        "actor": actor,
        "id": plan_id,
    }
    if status not in PLAN_STATUSES:
        raise OfficeError("bad_status", f"a status among {', '.join(PLAN_STATUSES)}", "status")
    if _date(due_on, "due_on") < _date(starts_on, "starts_on"):
        raise OfficeError("due_before_start", "the due date cannot be before the start", "due_on")
    if plan_id is None:
        row = conn.execute(
            """INSERT INTO work_plan (title, description, owner_id, starts_on, due_on, status, created_by)
               VALUES (%(title)s, %(description)s, %(owner)s, %(starts)s, %(due)s, %(status)s, %(actor)s)
               RETURNING id""",
            values,
        ).fetchone()
    else:
        row = conn.execute(
            """UPDATE work_plan SET title = %(title)s, description = %(description)s, owner_id = %(owner)s,
                      starts_on = %(starts)s, due_on = %(due)s, status = %(status)s, updated_at = now()
                WHERE id = %(id)s RETURNING id""",
            values,
        ).fetchone()
    if row is None:
        raise OfficeError("not_found", f"no work plan {plan_id}", status=404)
    return int(row[0])


_PLAN_SELECT = """SELECT p.id, p.title, p.description, p.owner_id, u.username AS owner, u.display_name AS owner_name,
                         p.starts_on, p.due_on, p.status, p.created_by, p.updated_at
                    FROM work_plan p JOIN staff_user u ON u.id = p.owner_id"""


def plans(
    conn: psycopg.Connection[Any], q: str = "", owner: str = "", status: str = "", limit: int = 50, offset: int = 0
) -> list[Plan]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            _PLAN_SELECT
            + """ WHERE (%(q)s = '%%%%' OR p.title ILIKE %(q)s OR p.description ILIKE %(q)s)
                    AND (%(owner)s = '' OR lower(u.username) = lower(%(owner)s))
                    AND (%(status)s = '' OR p.status = %(status)s)
                  ORDER BY p.status IN ('done', 'cancelled'), p.due_on, p.id LIMIT %(limit)s OFFSET %(offset)s""",
            {"q": like(q), "owner": owner.strip(), "status": status, "limit": limit, "offset": offset},
        ).fetchall()
    return [Plan(**r) for r in rows]


def get_plan(conn: psycopg.Connection[Any], plan_id: int) -> Plan:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_PLAN_SELECT + " WHERE p.id = %s", [plan_id]).fetchone()
    if row is None:
        raise OfficeError("not_found", f"no work plan {plan_id}", status=404)
    return Plan(**row)


# -- news -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class News:
    id: int
    title: str
    body: str
    published: bool
    published_at: dt.datetime | None
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime


_NEWS_SELECT = "SELECT id, title, body, published, published_at, created_by, created_at, updated_at FROM office_news"


def save_news(conn: psycopg.Connection[Any], news_id: int | None, *, title: str, body: str, actor: str) -> int:
    values = {"title": _title(title), "body": (body or "").strip()[:20_000], "actor": actor, "id": news_id}
    if news_id is None:
        row = conn.execute(
            "INSERT INTO office_news (title, body, created_by) VALUES (%(title)s, %(body)s, %(actor)s) RETURNING id",
            values,
        ).fetchone()
    else:
        row = conn.execute(
            "UPDATE office_news SET title = %(title)s, body = %(body)s, updated_at = now() WHERE id = %(id)s "
            "RETURNING id",
            values,
        ).fetchone()
    if row is None:
        raise OfficeError("not_found", f"no news {news_id}", status=404)
    return int(row[0])


def set_published(conn: psycopg.Connection[Any], news_id: int, published: bool) -> None:
    """Publish (shown on the home page from now) or withdraw."""
    row = conn.execute(
        """UPDATE office_news SET published = %(p)s, updated_at = now(),
                  published_at = CASE WHEN %(p)s THEN now() ELSE published_at END
            WHERE id = %(id)s RETURNING id""",
        {"p": published, "id": news_id},
    ).fetchone()
    if row is None:
        raise OfficeError("not_found", f"no news {news_id}", status=404)


def news_list(
    conn: psycopg.Connection[Any], q: str = "", published_only: bool = False, limit: int = 50, offset: int = 0
) -> list[News]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            _NEWS_SELECT
            + """ WHERE (%(q)s = '%%%%' OR title ILIKE %(q)s OR body ILIKE %(q)s) AND (published OR NOT %(p)s)
                  ORDER BY published DESC, coalesce(published_at, created_at) DESC, id DESC
                  LIMIT %(limit)s OFFSET %(offset)s""",
            {"q": like(q), "p": published_only, "limit": limit, "offset": offset},
        ).fetchall()
    return [News(**r) for r in rows]


def get_news(conn: psycopg.Connection[Any], news_id: int) -> News:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_NEWS_SELECT + " WHERE id = %s", [news_id]).fetchone()
    if row is None:
        raise OfficeError("not_found", f"no news {news_id}", status=404)
    return News(**row)


# -- internal messages ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    id: int
    sender: str
    sender_name: str
    to_role: str | None
    recipients: list[str]
    subject: str
    body: str
    sent_at: dt.datetime
    read_at: dt.datetime | None  # of the user looking (None for the sender)


def send_message(
    conn: psycopg.Connection[Any], sender_id: int, *, to_user: str = "", to_role: str = "", subject: str, body: str
) -> tuple[int, int]:
    """Send to one user or to every active user of a role; (message id, number of recipients)."""
    checked_subject = _title(subject, "subject")
    text = (body or "").strip()
    if len(text) > 20_000:
        raise OfficeError("too_long", "at most 20000 characters", "body")
    if bool(to_user.strip()) == bool(to_role.strip()):
        raise OfficeError("recipient", "choose either a user or a role", "to_user")
    if to_user.strip():
        recipients = [_user_id(conn, to_user, "to_user")]
    else:
        if not conn.execute("SELECT 1 FROM role WHERE code = %s", [to_role.strip()]).fetchone():
            raise OfficeError("unknown_role", f"no role {to_role!r}", "to_role")
        recipients = [
            int(r[0])
            for r in conn.execute("SELECT id FROM staff_user WHERE role = %s AND active ORDER BY id", [to_role.strip()])
        ]
        if not recipients:
            raise OfficeError("no_recipients", f"no active user has the role {to_role!r}", "to_role")
    row = conn.execute(
        "INSERT INTO office_message (sender_id, to_role, subject, body) VALUES (%s, %s, %s, %s) RETURNING id",
        [sender_id, to_role.strip() or None, checked_subject, text],
    ).fetchone()
    assert row is not None
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO office_message_recipient (message_id, user_id) VALUES (%s, %s)",
            [(row[0], user_id) for user_id in recipients],
        )
    return int(row[0]), len(recipients)


_MESSAGE_SELECT = """SELECT m.id, s.username AS sender, s.display_name AS sender_name, m.to_role,
                            array(SELECT u.username FROM office_message_recipient x
                                    JOIN staff_user u ON u.id = x.user_id
                                   WHERE x.message_id = m.id ORDER BY u.username) AS recipients,
                            m.subject, m.body, m.sent_at, %(read_at)s AS read_at
                       FROM office_message m JOIN staff_user s ON s.id = m.sender_id"""


def inbox(
    conn: psycopg.Connection[Any],
    user_id: int,
    q: str = "",
    unread_only: bool = False,
    limit: int = 50,
    offset: int = 0,
) -> list[Message]:
    sql = (
        _MESSAGE_SELECT.replace("%(read_at)s", "r.read_at")
        + """
         JOIN office_message_recipient r ON r.message_id = m.id AND r.user_id = %(user)s
        WHERE (%(q)s = '%%%%' OR m.subject ILIKE %(q)s OR m.body ILIKE %(q)s OR s.username ILIKE %(q)s)
          AND (NOT %(unread)s OR r.read_at IS NULL)
        ORDER BY m.id DESC LIMIT %(limit)s OFFSET %(offset)s"""
    )
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            sql, {"user": user_id, "q": like(q), "unread": unread_only, "limit": limit, "offset": offset}
        ).fetchall()
    return [Message(**r) for r in rows]


def sent(conn: psycopg.Connection[Any], user_id: int, q: str = "", limit: int = 50, offset: int = 0) -> list[Message]:
    sql = (
        _MESSAGE_SELECT.replace("%(read_at)s", "NULL::timestamptz")
        + """
        WHERE m.sender_id = %(user)s AND (%(q)s = '%%%%' OR m.subject ILIKE %(q)s OR m.body ILIKE %(q)s)
        ORDER BY m.id DESC LIMIT %(limit)s OFFSET %(offset)s"""
    )
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(sql, {"user": user_id, "q": like(q), "limit": limit, "offset": offset}).fetchall()
    return [Message(**r) for r in rows]


def get_message(conn: psycopg.Connection[Any], user_id: int, message_id: int) -> Message:
    """A message its sender or one of its recipients may see (anyone else: not found)."""
    sql = (
        _MESSAGE_SELECT.replace(
            "%(read_at)s",
            "(SELECT read_at FROM office_message_recipient WHERE message_id = m.id AND user_id = %(user)s)",
        )
        + """ WHERE m.id = %(id)s AND (m.sender_id = %(user)s OR EXISTS (
                SELECT 1 FROM office_message_recipient WHERE message_id = m.id AND user_id = %(user)s))"""
    )
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(sql, {"user": user_id, "id": message_id}).fetchone()
    if row is None:
        raise OfficeError("not_found", f"no message {message_id}", status=404)
    return Message(**row)


def mark_read(conn: psycopg.Connection[Any], user_id: int, message_id: int, read: bool = True) -> bool:
    """Mark a message of one's inbox read (or unread again); False when it is not in the inbox."""
    row = conn.execute(
        """UPDATE office_message_recipient SET read_at = CASE WHEN %(read)s THEN coalesce(read_at, now()) END
            WHERE message_id = %(id)s AND user_id = %(user)s RETURNING message_id""",
        {"read": read, "id": message_id, "user": user_id},
    ).fetchone()
    return row is not None


def unread_count(conn: psycopg.Connection[Any], user_id: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM office_message_recipient WHERE user_id = %s AND read_at IS NULL", [user_id]
    ).fetchone()
    return int(row[0]) if row else 0


def staff(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    """Active users (username, display name, role) to address."""
    return [
        (r[0], r[1], r[2])
        for r in conn.execute("SELECT username, display_name, role FROM staff_user WHERE active ORDER BY username")
    ]


def roles(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    return [(r[0], r[1], r[2]) for r in conn.execute("SELECT code, name_zh, name_en FROM role ORDER BY code")]


# -- demo ----------------------------------------------------------------------------------------------------------
def seed_demo(conn: psycopg.Connection[Any]) -> None:
    """A few documents, plans, news and messages of a gas utility's office; a second call adds nothing."""
    if conn.execute("SELECT 1 FROM office_news LIMIT 1").fetchone():
        return
    users = {r[0]: int(r[1]) for r in conn.execute("SELECT username, id FROM staff_user WHERE active")}
    author = "admin" if "admin" in users else next(iter(users), "demo")
    add_document(
        conn,
        title="燃气户内安全检查规程",
        tags="安全, 入户, 规程",
        description="入户安检的步骤与记录要求。",
        filename="安检规程.txt",
        content_type="text/plain",
        data="一、检查燃气表、阀门及连接管是否漏气（肥皂水检漏）。\n二、检查燃气灶具熄火保护装置。\n"
        "三、检查胶管是否老化、超期（18 个月）。\n四、填写安检记录并由用户签字。\n".encode(),
        actor=author,
    )
    doc = add_document(
        conn,
        title="2025 年阶梯气价执行通知",
        tags="价格, 通知",
        description="居民生活用气阶梯价格。",
        filename="阶梯气价.txt",
        content_type="text/plain",
        data=(
            "第一档 0-300 立方米 2.61 元/立方米；第二档 301-600 立方米 3.13 元/立方米；第三档 600 立方米以上 3.91 元。"
        ).encode(),
        actor=author,
    )
    add_version(
        conn,
        doc,
        filename="阶梯气价-修订.txt",
        content_type="text/plain",
        data=(
            "第一档 0-300 立方米 2.61 元；第二档 301-600 立方米 3.13 元；"
            "第三档 600 立方米以上 3.91 元（自 1 月 1 日起）。"
        ).encode(),
        actor=author,
        note="补充执行日期",
    )
    today = dt.date.today()
    owners = [u for u in ("reader", "engineer", "supervisor") if u in users] or [author]
    if author in users:
        for title, owner, start, days, status in (
            ("城东片区 3 月抄表", owners[0], 0, 10, "in_progress"),
            ("幸福小区调压箱年度维护", owners[min(1, len(owners) - 1)], 3, 14, "planned"),
            ("冬季供气保障预案演练", owners[-1], -20, 5, "done"),
        ):
            save_plan(
                conn,
                None,
                title=title,
                description="",
                owner=owner,
                starts_on=today + dt.timedelta(days=start),
                due_on=today + dt.timedelta(days=start + days),
                status=status,
                actor=author,
            )
    first = save_news(
        conn,
        None,
        title="营业厅春节期间营业时间调整",
        body="春节期间（除夕至初三）营业厅 9:00-15:00 营业，网上缴费与自助终端照常使用。",
        actor=author,
    )
    set_published(conn, first, True)
    second = save_news(
        conn,
        None,
        title="关于开展冬季燃气安全入户检查的通知",
        body="12 月 1 日起对城东片区居民用户开展入户安检，请各抄表员提前通知用户。",
        actor=author,
    )
    set_published(conn, second, True)
    save_news(conn, None, title="（草稿）新版缴费小程序上线", body="待定。", actor=author)
    if author in users:
        if (
            "meter_reader" in {r[0] for r in conn.execute("SELECT code FROM role")}
            and conn.execute("SELECT 1 FROM staff_user WHERE role = 'meter_reader' AND active").fetchone()
        ):
            send_message(
                conn,
                users[author],
                to_role="meter_reader",
                subject="本月抄表截止日期",
                body="请于 25 日前完成本月抄表并上传手持机数据。",
            )
        if "cashier" in users:
            send_message(
                conn,
                users[author],
                to_user="cashier",
                subject="发票领用",
                body="新一批发票已入库，请到财务室领用。",
            )
