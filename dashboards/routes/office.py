"""Office (办公管理): documents with versions, work plans, news for the home page, internal messages.
Pages under /office and `/api/v1/office/...`.

Documents, plans and news are seen with office.view and written with office.edit; messages are anyone's
who is signed in: each person reads their own inbox and what they sent, and sends to a user or a role.
The work is done by `meterhub.office`, one transaction per action, each an entry of the operation log.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, NoReturn
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from dashboards import i18n
from dashboards.export import table_response
from dashboards.security import Principal
from dashboards.web import (
    ActionError,
    FormData,
    language_of,
    note_object,
    redirect,
    render,
    require,
    settings_of,
    store_of,
)
from dashboards.web import (
    text as _t,
)
from meterhub import office
from meterhub.office import OfficeError

router = APIRouter()
TAGS: list[Any] = ["office"]
PAGE_SIZE = 50
VIEW = "office.view"
EDIT = "office.edit"
Format = Annotated[str, Query(pattern="^(html|xlsx|csv)$")]
Page = Annotated[int, Query(ge=1, le=100_000)]
Text = Annotated[str, Query(max_length=100)]


def message_of(request: Request, exc: OfficeError) -> str:
    key = f"office.error.{exc.code}"
    text = _t(request, key) if key in i18n.catalogue() else exc.message
    field_key = f"office.field.{exc.field}"
    if exc.field:
        return f"{_t(request, field_key) if field_key in i18n.catalogue() else exc.field}: {text}"
    return text


def api_refusal(exc: OfficeError) -> NoReturn:
    raise ActionError(exc.code, f"{exc.field}: {exc.message}" if exc.field else exc.message, exc.status) from exc


def page_refusal(request: Request, exc: OfficeError) -> NoReturn:
    raise ActionError(exc.code, message_of(request, exc), exc.status) from exc


def _pager(base: str, query: dict[str, Any], page: int, has_more: bool) -> dict[str, Any]:
    def url(number: int) -> str:
        return f"{base}?{urlencode({**query, 'page': number})}"

    return {
        "prev_url": url(page - 1) if page > 1 else None,
        "next_url": url(page + 1) if has_more else None,
        "export_url": f"{base}?{urlencode({**query, 'format': 'xlsx'})}",
    }


def _export(request: Request, name: str, headers: list[str], rows: list[list[Any]], fmt: str) -> Response:
    return table_response(name, [_t(request, h) for h in headers], rows, fmt, timezone=settings_of(request).timezone)


async def _read(upload: UploadFile) -> bytes:
    """The upload's bytes, one more than the limit at most (so that too large is noticed, not read whole)."""
    return await upload.read(office.MAX_DOCUMENT_BYTES + 1)


# -- the office's front page -----------------------------------------------------------------------------------
@router.get("/office", include_in_schema=False)
def office_page(request: Request, user: Annotated[Principal, Depends(require())]) -> Response:
    with store_of(request).connection() as conn:
        unread = office.unread_count(conn, user.user_id)
        inbox = office.inbox(conn, user.user_id, limit=5)
        news = office.news_list(conn, published_only=True, limit=5) if user.can(VIEW) else []
        plans = office.plans(conn, owner=user.username, limit=10) if user.can(VIEW) else []
    return render(request, "office/index.html", unread=unread, inbox=inbox, news=news, plans=plans)


# -- documents -----------------------------------------------------------------------------------------------
@router.get("/office/documents", include_in_schema=False)
def documents_page(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: Text = "",
    tag: Text = "",
    page: Page = 1,
    format: Format = "html",
) -> Response:
    with store_of(request).connection() as conn:
        if format != "html":
            rows = office.search_documents(conn, q, tag, limit=200_000)
            return _export(
                request,
                "documents",
                [
                    "office.field.title",
                    "office.field.tags",
                    "office.doc.version",
                    "office.doc.filename",
                    "office.doc.size",
                    "office.doc.created_by",
                    "office.doc.updated_at",
                ],
                [
                    [d.title, " ".join(d.tags), d.current_version, d.filename, d.size_bytes, d.created_by, d.updated_at]
                    for d in rows
                ],
                format,
            )
        rows = office.search_documents(conn, q, tag, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        tags = office.all_tags(conn)
    return render(
        request,
        "office/documents.html",
        rows=rows[:PAGE_SIZE],
        q=q,
        tag=tag,
        tags=tags,
        page=page,
        **_pager("/office/documents", {"q": q, "tag": tag}, page, len(rows) > PAGE_SIZE),
    )


@router.get("/office/documents/new", include_in_schema=False)
def new_document_page(request: Request, user: Annotated[Principal, Depends(require(EDIT))]) -> Response:
    return render(request, "office/document_new.html", values={}, max_mib=office.MAX_DOCUMENT_BYTES // (1024 * 1024))


@router.post("/office/documents", include_in_schema=False)
async def create_document(
    request: Request,
    user: Annotated[Principal, Depends(require(EDIT))],
    file: Annotated[UploadFile, File()],
    title: Annotated[str, Form(max_length=200)] = "",
    tags: Annotated[str, Form(max_length=1000)] = "",
    description: Annotated[str, Form(max_length=2000)] = "",
    note: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    data = await _read(file)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            document_id = office.add_document(
                conn,
                title=title,
                tags=tags,
                description=description,
                filename=file.filename or "",
                content_type=file.content_type or "",
                data=data,
                actor=user.username,
                note=note,
            )
    except OfficeError as exc:
        return render(
            request,
            "office/document_new.html",
            exc.status,
            message_error=message_of(request, exc),
            values={"title": title, "tags": tags, "description": description, "note": note},
            max_mib=office.MAX_DOCUMENT_BYTES // (1024 * 1024),
        )
    note_object(request, "office_document", document_id)
    return redirect(f"/office/documents/{document_id}?done=uploaded")


def _document_page(request: Request, document_id: int, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        try:
            document, versions = office.get_document(conn, document_id)
        except OfficeError as exc:
            page_refusal(request, exc)
    return render(
        request,
        "office/document.html",
        status,
        d=document,
        versions=versions,
        max_mib=office.MAX_DOCUMENT_BYTES // (1024 * 1024),
        **extra,
    )


@router.get("/office/documents/{document_id}", include_in_schema=False)
def document_page(
    request: Request, document_id: int, user: Annotated[Principal, Depends(require(VIEW))], done: str = ""
) -> Response:
    notice = _t(request, f"office.doc.done_{done}") if done in ("uploaded", "version", "edited") else None
    return _document_page(request, document_id, message_ok=notice)


@router.post("/office/documents/{document_id}", include_in_schema=False)
def edit_document(
    request: Request,
    document_id: int,
    user: Annotated[Principal, Depends(require(EDIT))],
    title: Annotated[str, Form(max_length=200)] = "",
    tags: Annotated[str, Form(max_length=1000)] = "",
    description: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    note_object(request, "office_document", document_id)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            office.edit_document(conn, document_id, title=title, tags=tags, description=description)
    except OfficeError as exc:
        if exc.status == 404:
            page_refusal(request, exc)
        return _document_page(request, document_id, exc.status, message_error=message_of(request, exc))
    return redirect(f"/office/documents/{document_id}?done=edited")


@router.post("/office/documents/{document_id}/versions", include_in_schema=False)
async def upload_version(
    request: Request,
    document_id: int,
    user: Annotated[Principal, Depends(require(EDIT))],
    file: Annotated[UploadFile, File()],
    note: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    note_object(request, "office_document", document_id)
    data = await _read(file)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            office.add_version(
                conn,
                document_id,
                filename=file.filename or "",
                content_type=file.content_type or "",
                data=data,
                actor=user.username,
                note=note,
            )
    except OfficeError as exc:
        if exc.status == 404:
            page_refusal(request, exc)
        return _document_page(request, document_id, exc.status, message_error=message_of(request, exc))
    return redirect(f"/office/documents/{document_id}?done=version")


def _download(request: Request, document_id: int, version: int | None) -> Response:
    with store_of(request).connection() as conn:
        try:
            filename, content_type, data = office.version_content(conn, document_id, version)
        except OfficeError as exc:
            api_refusal(exc) if request.url.path.startswith("/api/") else page_refusal(request, exc)
    return Response(
        data,
        media_type=content_type,
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
            "Cache-Control": "private, no-store",
        },
    )


@router.get("/office/documents/{document_id}/versions/{version}/download", include_in_schema=False)
def download_version(
    request: Request, document_id: int, version: int, user: Annotated[Principal, Depends(require(VIEW))]
) -> Response:
    return _download(request, document_id, version)


# -- work plans ----------------------------------------------------------------------------------------------
def _plan_choices(request: Request) -> dict[str, Any]:
    with store_of(request).connection() as conn:
        return {"staff": office.staff(conn), "statuses": office.PLAN_STATUSES}


@router.get("/office/plans", include_in_schema=False)
def plans_page(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: Text = "",
    owner: Text = "",
    status: Annotated[str, Query(pattern="^(|planned|in_progress|done|cancelled)$")] = "",
    page: Page = 1,
    format: Format = "html",
) -> Response:
    with store_of(request).connection() as conn:
        if format != "html":
            rows = office.plans(conn, q, owner, status, limit=200_000)
            return _export(
                request,
                "work_plans",
                [
                    "office.field.title",
                    "office.field.owner",
                    "office.field.starts_on",
                    "office.field.due_on",
                    "office.field.status",
                    "office.field.description",
                ],
                [
                    [
                        p.title,
                        p.owner,
                        p.starts_on,
                        p.due_on,
                        _t(request, f"office.plan.status.{p.status}"),
                        p.description,
                    ]
                    for p in rows
                ],
                format,
            )
        rows = office.plans(conn, q, owner, status, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    return render(
        request,
        "office/plans.html",
        rows=rows[:PAGE_SIZE],
        q=q,
        owner=owner,
        status=status,
        page=page,
        today=dt.date.today(),
        **_plan_choices(request),
        **_pager("/office/plans", {"q": q, "owner": owner, "status": status}, page, len(rows) > PAGE_SIZE),
    )


@router.get("/office/plans/new", include_in_schema=False)
def new_plan_page(request: Request, user: Annotated[Principal, Depends(require(EDIT))]) -> Response:
    today = dt.date.today()
    values = {
        "owner": user.username,
        "starts_on": today.isoformat(),
        "due_on": (today + dt.timedelta(days=7)).isoformat(),
        "status": "planned",
    }
    return render(request, "office/plan.html", plan=None, values=values, **_plan_choices(request))


def _plan_form(form: dict[str, str]) -> dict[str, str]:
    return {k: form.get(k, "") for k in ("title", "description", "owner", "starts_on", "due_on", "status")}


@router.post("/office/plans", include_in_schema=False)
def create_plan(request: Request, user: Annotated[Principal, Depends(require(EDIT))], form: FormData) -> Response:
    values = _plan_form(form)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            plan_id = office.save_plan(conn, None, actor=user.username, **values)
    except OfficeError as exc:
        return render(
            request,
            "office/plan.html",
            exc.status,
            plan=None,
            values=values,
            message_error=message_of(request, exc),
            **_plan_choices(request),
        )
    note_object(request, "work_plan", plan_id)
    return redirect(f"/office/plans/{plan_id}?done=saved")


@router.get("/office/plans/{plan_id}", include_in_schema=False)
def plan_page(
    request: Request, plan_id: int, user: Annotated[Principal, Depends(require(VIEW))], done: str = ""
) -> Response:
    with store_of(request).connection() as conn:
        try:
            plan = office.get_plan(conn, plan_id)
        except OfficeError as exc:
            page_refusal(request, exc)
    values = {
        "title": plan.title,
        "description": plan.description,
        "owner": plan.owner,
        "starts_on": plan.starts_on.isoformat(),
        "due_on": plan.due_on.isoformat(),
        "status": plan.status,
    }
    return render(
        request,
        "office/plan.html",
        plan=plan,
        values=values,
        message_ok=_t(request, "common.saved") if done else None,
        **_plan_choices(request),
    )


@router.post("/office/plans/{plan_id}", include_in_schema=False)
def save_plan(
    request: Request, plan_id: int, user: Annotated[Principal, Depends(require(EDIT))], form: FormData
) -> Response:
    note_object(request, "work_plan", plan_id)
    values = _plan_form(form)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            plan = office.get_plan(conn, plan_id)
            office.save_plan(conn, plan_id, actor=user.username, **values)
    except OfficeError as exc:
        if exc.status == 404:
            page_refusal(request, exc)
        return render(
            request,
            "office/plan.html",
            exc.status,
            plan=plan,
            values=values,
            message_error=message_of(request, exc),
            **_plan_choices(request),
        )
    return redirect(f"/office/plans/{plan_id}?done=saved")


# -- news ----------------------------------------------------------------------------------------------------
@router.get("/office/news", include_in_schema=False)
def news_page(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: Text = "",
    page: Page = 1,
    format: Format = "html",
) -> Response:
    with store_of(request).connection() as conn:
        if format != "html":
            rows = office.news_list(conn, q, limit=200_000)
            return _export(
                request,
                "news",
                [
                    "office.field.title",
                    "office.news.state",
                    "office.news.published_at",
                    "office.doc.created_by",
                    "office.field.body",
                ],
                [
                    [
                        n.title,
                        _t(request, "office.news.published" if n.published else "office.news.draft"),
                        n.published_at,
                        n.created_by,
                        n.body,
                    ]
                    for n in rows
                ],
                format,
            )
        rows = office.news_list(conn, q, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    return render(
        request,
        "office/news_list.html",
        rows=rows[:PAGE_SIZE],
        q=q,
        page=page,
        **_pager("/office/news", {"q": q}, page, len(rows) > PAGE_SIZE),
    )


@router.get("/office/news/new", include_in_schema=False)
def new_news_page(request: Request, user: Annotated[Principal, Depends(require(EDIT))]) -> Response:
    return render(request, "office/news.html", news=None, values={})


@router.post("/office/news", include_in_schema=False)
def create_news(
    request: Request,
    user: Annotated[Principal, Depends(require(EDIT))],
    title: Annotated[str, Form(max_length=200)] = "",
    body: Annotated[str, Form(max_length=20_000)] = "",
    publish: Annotated[str, Form()] = "",
) -> Response:
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            news_id = office.save_news(conn, None, title=title, body=body, actor=user.username)
            if publish:
                office.set_published(conn, news_id, True)
    except OfficeError as exc:
        return render(
            request,
            "office/news.html",
            exc.status,
            news=None,
            values={"title": title, "body": body},
            message_error=message_of(request, exc),
        )
    note_object(request, "office_news", news_id)
    return redirect(f"/office/news/{news_id}?done=saved")


@router.get("/office/news/{news_id}", include_in_schema=False)
def news_item_page(
    request: Request, news_id: int, user: Annotated[Principal, Depends(require(VIEW))], done: str = ""
) -> Response:
    with store_of(request).connection() as conn:
        try:
            news = office.get_news(conn, news_id)
        except OfficeError as exc:
            page_refusal(request, exc)
    notice = _t(request, f"office.news.done_{done}") if done in ("saved", "published", "withdrawn") else None
    return render(
        request, "office/news.html", news=news, values={"title": news.title, "body": news.body}, message_ok=notice
    )


@router.post("/office/news/{news_id}", include_in_schema=False)
def save_news(
    request: Request,
    news_id: int,
    user: Annotated[Principal, Depends(require(EDIT))],
    title: Annotated[str, Form(max_length=200)] = "",
    body: Annotated[str, Form(max_length=20_000)] = "",
) -> Response:
    note_object(request, "office_news", news_id)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            news = office.get_news(conn, news_id)
            office.save_news(conn, news_id, title=title, body=body, actor=user.username)
    except OfficeError as exc:
        if exc.status == 404:
            page_refusal(request, exc)
        return render(
            request,
            "office/news.html",
            exc.status,
            news=news,
            values={"title": title, "body": body},
            message_error=message_of(request, exc),
        )
    return redirect(f"/office/news/{news_id}?done=saved")


def _publish(request: Request, user: Principal, news_id: int, published: bool) -> None:
    note_object(request, "office_news", news_id)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            office.set_published(conn, news_id, published)
    except OfficeError as exc:
        api_refusal(exc) if request.url.path.startswith("/api/") else page_refusal(request, exc)


@router.post("/office/news/{news_id}/publish", include_in_schema=False)
def publish_news(request: Request, news_id: int, user: Annotated[Principal, Depends(require(EDIT))]) -> Response:
    _publish(request, user, news_id, True)
    return redirect(f"/office/news/{news_id}?done=published")


@router.post("/office/news/{news_id}/unpublish", include_in_schema=False)
def unpublish_news(request: Request, news_id: int, user: Annotated[Principal, Depends(require(EDIT))]) -> Response:
    _publish(request, user, news_id, False)
    return redirect(f"/office/news/{news_id}?done=withdrawn")


# -- internal messages ---------------------------------------------------------------------------------------
def _recipients(request: Request) -> dict[str, Any]:
    english = language_of(request) == "en"
    with store_of(request).connection() as conn:
        return {
            "staff": office.staff(conn),
            "roles": [(code, name_en if english else name_zh) for code, name_zh, name_en in office.roles(conn)],
        }


@router.get("/office/messages", include_in_schema=False)
def inbox_page(
    request: Request,
    user: Annotated[Principal, Depends(require())],
    q: Text = "",
    unread: Annotated[str, Query(pattern="^(|1)$")] = "",
    page: Page = 1,
    format: Format = "html",
    done: str = "",
) -> Response:
    with store_of(request).connection() as conn:
        if format != "html":
            rows = office.inbox(conn, user.user_id, q, bool(unread), limit=200_000)
            return _export(
                request,
                "inbox",
                [
                    "office.msg.from",
                    "office.field.subject",
                    "office.msg.sent_at",
                    "office.msg.read_at",
                    "office.field.body",
                ],
                [[m.sender, m.subject, m.sent_at, m.read_at, m.body] for m in rows],
                format,
            )
        rows = office.inbox(conn, user.user_id, q, bool(unread), limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        unread_count = office.unread_count(conn, user.user_id)
    notice = _t(request, "office.msg.done_sent", n=done) if done.isdigit() else None
    return render(
        request,
        "office/inbox.html",
        rows=rows[:PAGE_SIZE],
        q=q,
        unread=unread,
        page=page,
        unread_count=unread_count,
        box="inbox",
        message_ok=notice,
        **_pager("/office/messages", {"q": q, "unread": unread}, page, len(rows) > PAGE_SIZE),
    )


@router.get("/office/messages/sent", include_in_schema=False)
def sent_page(
    request: Request,
    user: Annotated[Principal, Depends(require())],
    q: Text = "",
    page: Page = 1,
    format: Format = "html",
    done: str = "",
) -> Response:
    with store_of(request).connection() as conn:
        if format != "html":
            rows = office.sent(conn, user.user_id, q, limit=200_000)
            return _export(
                request,
                "sent",
                ["office.msg.to", "office.field.subject", "office.msg.sent_at", "office.field.body"],
                [[m.to_role or ", ".join(m.recipients), m.subject, m.sent_at, m.body] for m in rows],
                format,
            )
        rows = office.sent(conn, user.user_id, q, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        unread_count = office.unread_count(conn, user.user_id)
    return render(
        request,
        "office/inbox.html",
        rows=rows[:PAGE_SIZE],
        q=q,
        unread="",
        page=page,
        unread_count=unread_count,
        box="sent",
        message_ok=_t(request, "office.msg.done_sent", n=done) if done.isdigit() else None,
        **_pager("/office/messages/sent", {"q": q}, page, len(rows) > PAGE_SIZE),
    )


@router.get("/office/messages/new", include_in_schema=False)
def new_message_page(
    request: Request, user: Annotated[Principal, Depends(require())], to: Text = "", reply: int | None = None
) -> Response:
    values = {"to_user": to}
    if reply is not None:
        with store_of(request).connection() as conn:
            try:
                original = office.get_message(conn, user.user_id, reply)
            except OfficeError as exc:
                page_refusal(request, exc)
        values = {"to_user": original.sender, "subject": f"Re: {original.subject}"[:200]}
    return render(request, "office/message_new.html", values=values, **_recipients(request))


@router.post("/office/messages", include_in_schema=False)
def send_message(
    request: Request,
    user: Annotated[Principal, Depends(require())],
    to_user: Annotated[str, Form(max_length=64)] = "",
    to_role: Annotated[str, Form(max_length=32)] = "",
    subject: Annotated[str, Form(max_length=200)] = "",
    body: Annotated[str, Form(max_length=20_000)] = "",
) -> Response:
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            message_id, count = office.send_message(
                conn, user.user_id, to_user=to_user, to_role=to_role, subject=subject, body=body
            )
    except OfficeError as exc:
        return render(
            request,
            "office/message_new.html",
            exc.status,
            message_error=message_of(request, exc),
            values={"to_user": to_user, "to_role": to_role, "subject": subject, "body": body},
            **_recipients(request),
        )
    note_object(request, "office_message", message_id)
    return redirect(f"/office/messages/sent?done={count}")


@router.get("/office/messages/{message_id}", include_in_schema=False)
def message_page(request: Request, message_id: int, user: Annotated[Principal, Depends(require())]) -> Response:
    with store_of(request).connection() as conn:
        try:
            message = office.get_message(conn, user.user_id, message_id)
        except OfficeError as exc:
            page_refusal(request, exc)
        unread_count = office.unread_count(conn, user.user_id)
    return render(request, "office/message.html", m=message, unread_count=unread_count)


def _mark(request: Request, user: Principal, message_id: int, read: bool) -> None:
    note_object(request, "office_message", message_id)
    with store_of(request).transaction(actor=user.username) as conn:
        if not office.mark_read(conn, user.user_id, message_id, read):
            exc = OfficeError("not_found", f"no message {message_id} in your inbox", status=404)
            api_refusal(exc) if request.url.path.startswith("/api/") else page_refusal(request, exc)


@router.post("/office/messages/{message_id}/read", include_in_schema=False)
def open_message(request: Request, message_id: int, user: Annotated[Principal, Depends(require())]) -> Response:
    """Opening a message from the inbox marks it read (a POST, as every change) and shows it."""
    _mark(request, user, message_id, True)
    return redirect(f"/office/messages/{message_id}")


@router.post("/office/messages/{message_id}/unread", include_in_schema=False)
def unread_message(request: Request, message_id: int, user: Annotated[Principal, Depends(require())]) -> Response:
    _mark(request, user, message_id, False)
    return redirect("/office/messages")


# -- API -----------------------------------------------------------------------------------------------------
def document_json(d: office.DocumentRow) -> dict[str, Any]:
    return {
        "id": d.id,
        "title": d.title,
        "tags": d.tags,
        "description": d.description,
        "current_version": d.current_version,
        "filename": d.filename,
        "size_bytes": d.size_bytes,
        "created_by": d.created_by,
        "updated_at": d.updated_at.isoformat(),
    }


@router.get("/api/v1/office/documents", tags=TAGS)
def api_documents(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: Text = "",
    tag: Text = "",
    page: Page = 1,
) -> dict[str, Any]:
    """Documents whose title, tags, description, file names or plain text contain `q` (newest first)."""
    with store_of(request).connection() as conn:
        rows = office.search_documents(conn, q, tag, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    return {"items": [document_json(d) for d in rows[:PAGE_SIZE]], "page": page, "has_more": len(rows) > PAGE_SIZE}


@router.post("/api/v1/office/documents", tags=TAGS, status_code=201)
async def api_create_document(
    request: Request,
    user: Annotated[Principal, Depends(require(EDIT))],
    file: Annotated[UploadFile, File(description="The first version's file (at most 10 MiB).")],
    title: Annotated[str, Form(max_length=200)],
    tags: Annotated[str, Form(max_length=1000)] = "",
    description: Annotated[str, Form(max_length=2000)] = "",
    note: Annotated[str, Form(max_length=500)] = "",
) -> dict[str, Any]:
    """Upload a new document (multipart form: file, title, tags separated by commas, description, note)."""
    data = await _read(file)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            document_id = office.add_document(
                conn,
                title=title,
                tags=tags,
                description=description,
                filename=file.filename or "",
                content_type=file.content_type or "",
                data=data,
                actor=user.username,
                note=note,
            )
            document, _versions = office.get_document(conn, document_id)
    except OfficeError as exc:
        api_refusal(exc)
    note_object(request, "office_document", document_id)
    return document_json(document)


@router.get("/api/v1/office/documents/{document_id}", tags=TAGS)
def api_document(
    request: Request, document_id: int, user: Annotated[Principal, Depends(require(VIEW))]
) -> dict[str, Any]:
    """A document with all its versions (newest first)."""
    with store_of(request).connection() as conn:
        try:
            document, versions = office.get_document(conn, document_id)
        except OfficeError as exc:
            api_refusal(exc)
    return {
        **document_json(document),
        "versions": [
            {
                "version": v.version,
                "filename": v.filename,
                "content_type": v.content_type,
                "size_bytes": v.size_bytes,
                "sha256": v.sha256,
                "note": v.note,
                "uploaded_by": v.uploaded_by,
                "uploaded_at": v.uploaded_at.isoformat(),
            }
            for v in versions
        ],
    }


@router.post("/api/v1/office/documents/{document_id}/versions", tags=TAGS, status_code=201)
async def api_upload_version(
    request: Request,
    document_id: int,
    user: Annotated[Principal, Depends(require(EDIT))],
    file: Annotated[UploadFile, File(description="The new version's file (at most 10 MiB).")],
    note: Annotated[str, Form(max_length=500)] = "",
) -> dict[str, Any]:
    """Upload a new version of a document (multipart form: file, note)."""
    note_object(request, "office_document", document_id)
    data = await _read(file)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            version = office.add_version(
                conn,
                document_id,
                filename=file.filename or "",
                content_type=file.content_type or "",
                data=data,
                actor=user.username,
                note=note,
            )
    except OfficeError as exc:
        api_refusal(exc)
    return {"id": document_id, "version": version}


@router.get("/api/v1/office/documents/{document_id}/versions/{version}/content", tags=TAGS)
def api_download_version(
    request: Request, document_id: int, version: int, user: Annotated[Principal, Depends(require(VIEW))]
) -> Response:
    """The file of one version of a document, as uploaded."""
    return _download(request, document_id, version)


def plan_json(p: office.Plan) -> dict[str, Any]:
    return {
        "id": p.id,
        "title": p.title,
        "description": p.description,
        "owner": p.owner,
        "starts_on": p.starts_on.isoformat(),
        "due_on": p.due_on.isoformat(),
        "status": p.status,
        "created_by": p.created_by,
        "updated_at": p.updated_at.isoformat(),
    }


class PlanBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=200)
    description: str = Field(default="", max_length=4000)
    owner: str = Field(description="The owner's user name.")
    starts_on: dt.date
    due_on: dt.date
    status: str = Field(default="planned", description="planned, in_progress, done or cancelled")


@router.get("/api/v1/office/plans", tags=TAGS)
def api_plans(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: Text = "",
    owner: Text = "",
    status: Annotated[str, Query(pattern="^(|planned|in_progress|done|cancelled)$")] = "",
    page: Page = 1,
) -> dict[str, Any]:
    """Work plans, open ones first by due date; filter by text, owner and status."""
    with store_of(request).connection() as conn:
        rows = office.plans(conn, q, owner, status, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    return {"items": [plan_json(p) for p in rows[:PAGE_SIZE]], "page": page, "has_more": len(rows) > PAGE_SIZE}


@router.post("/api/v1/office/plans", tags=TAGS, status_code=201)
def api_create_plan(
    request: Request, user: Annotated[Principal, Depends(require(EDIT))], body: Annotated[PlanBody, Body()]
) -> dict[str, Any]:
    """A new work plan."""
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            plan_id = office.save_plan(conn, None, actor=user.username, **body.model_dump())
            plan = office.get_plan(conn, plan_id)
    except OfficeError as exc:
        api_refusal(exc)
    note_object(request, "work_plan", plan_id)
    return plan_json(plan)


@router.put("/api/v1/office/plans/{plan_id}", tags=TAGS)
def api_save_plan(
    request: Request,
    plan_id: int,
    user: Annotated[Principal, Depends(require(EDIT))],
    body: Annotated[PlanBody, Body()],
) -> dict[str, Any]:
    """Change a work plan (all its fields)."""
    note_object(request, "work_plan", plan_id)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            office.save_plan(conn, plan_id, actor=user.username, **body.model_dump())
            plan = office.get_plan(conn, plan_id)
    except OfficeError as exc:
        api_refusal(exc)
    return plan_json(plan)


def news_json(n: office.News) -> dict[str, Any]:
    return {
        "id": n.id,
        "title": n.title,
        "body": n.body,
        "published": n.published,
        "published_at": n.published_at.isoformat() if n.published_at else None,
        "created_by": n.created_by,
        "updated_at": n.updated_at.isoformat(),
    }


class NewsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=200)
    body: str = Field(default="", max_length=20_000)


@router.get("/api/v1/office/news", tags=TAGS)
def api_news(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: Text = "",
    published: bool = False,
    page: Page = 1,
) -> dict[str, Any]:
    """News, published first and newest first; `published=true` for only what the home page shows."""
    with store_of(request).connection() as conn:
        rows = office.news_list(conn, q, published, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    return {"items": [news_json(n) for n in rows[:PAGE_SIZE]], "page": page, "has_more": len(rows) > PAGE_SIZE}


@router.post("/api/v1/office/news", tags=TAGS, status_code=201)
def api_create_news(
    request: Request, user: Annotated[Principal, Depends(require(EDIT))], body: Annotated[NewsBody, Body()]
) -> dict[str, Any]:
    """Write news (a draft until published)."""
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            news_id = office.save_news(conn, None, title=body.title, body=body.body, actor=user.username)
            news = office.get_news(conn, news_id)
    except OfficeError as exc:
        api_refusal(exc)
    note_object(request, "office_news", news_id)
    return news_json(news)


@router.put("/api/v1/office/news/{news_id}", tags=TAGS)
def api_save_news(
    request: Request,
    news_id: int,
    user: Annotated[Principal, Depends(require(EDIT))],
    body: Annotated[NewsBody, Body()],
) -> dict[str, Any]:
    """Change the title and text of news."""
    note_object(request, "office_news", news_id)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            office.save_news(conn, news_id, title=body.title, body=body.body, actor=user.username)
            news = office.get_news(conn, news_id)
    except OfficeError as exc:
        api_refusal(exc)
    return news_json(news)


@router.post("/api/v1/office/news/{news_id}/publish", tags=TAGS)
def api_publish_news(
    request: Request, news_id: int, user: Annotated[Principal, Depends(require(EDIT))]
) -> dict[str, Any]:
    """Publish news: shown on the home page from now on."""
    _publish(request, user, news_id, True)
    return {"id": news_id, "published": True}


@router.post("/api/v1/office/news/{news_id}/unpublish", tags=TAGS)
def api_unpublish_news(
    request: Request, news_id: int, user: Annotated[Principal, Depends(require(EDIT))]
) -> dict[str, Any]:
    """Withdraw news from the home page."""
    _publish(request, user, news_id, False)
    return {"id": news_id, "published": False}


def message_json(m: office.Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "from": m.sender,
        "to_role": m.to_role,
        "to": m.recipients,
        "subject": m.subject,
        "body": m.body,
        "sent_at": m.sent_at.isoformat(),
        "read_at": m.read_at.isoformat() if m.read_at else None,
    }


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to_user: str = Field(default="", description="A user name; or leave empty and give to_role.")
    to_role: str = Field(default="", description="A role code: every active user of it receives the message.")
    subject: str = Field(max_length=200)
    body: str = Field(default="", max_length=20_000)


@router.get("/api/v1/office/messages", tags=TAGS)
def api_inbox(
    request: Request,
    user: Annotated[Principal, Depends(require())],
    q: Text = "",
    unread: bool = False,
    page: Page = 1,
) -> dict[str, Any]:
    """The caller's inbox, newest first, with read times; `unread=true` for the unread ones."""
    with store_of(request).connection() as conn:
        rows = office.inbox(conn, user.user_id, q, unread, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        count = office.unread_count(conn, user.user_id)
    return {
        "items": [message_json(m) for m in rows[:PAGE_SIZE]],
        "unread": count,
        "page": page,
        "has_more": len(rows) > PAGE_SIZE,
    }


@router.get("/api/v1/office/messages/sent", tags=TAGS)
def api_sent(
    request: Request, user: Annotated[Principal, Depends(require())], q: Text = "", page: Page = 1
) -> dict[str, Any]:
    """The messages the caller sent, newest first."""
    with store_of(request).connection() as conn:
        rows = office.sent(conn, user.user_id, q, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    return {"items": [message_json(m) for m in rows[:PAGE_SIZE]], "page": page, "has_more": len(rows) > PAGE_SIZE}


@router.post("/api/v1/office/messages", tags=TAGS, status_code=201)
def api_send_message(
    request: Request, user: Annotated[Principal, Depends(require())], body: Annotated[MessageBody, Body()]
) -> dict[str, Any]:
    """Send a message to one user or to every active user of a role."""
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            message_id, count = office.send_message(
                conn, user.user_id, to_user=body.to_user, to_role=body.to_role, subject=body.subject, body=body.body
            )
    except OfficeError as exc:
        api_refusal(exc)
    note_object(request, "office_message", message_id)
    return {"id": message_id, "recipients": count}


@router.get("/api/v1/office/messages/{message_id}", tags=TAGS)
def api_message(request: Request, message_id: int, user: Annotated[Principal, Depends(require())]) -> dict[str, Any]:
    """One message the caller sent or received (reading it here does not mark it read)."""
    with store_of(request).connection() as conn:
        try:
            return message_json(office.get_message(conn, user.user_id, message_id))
        except OfficeError as exc:
            api_refusal(exc)


@router.post("/api/v1/office/messages/{message_id}/read", tags=TAGS)
def api_mark_read(
    request: Request,
    message_id: int,
    user: Annotated[Principal, Depends(require())],
    read: bool = True,
) -> dict[str, Any]:
    """Mark a message of the caller's inbox read (`read=false`: unread again)."""
    _mark(request, user, message_id, read)
    return {"id": message_id, "read": read}
