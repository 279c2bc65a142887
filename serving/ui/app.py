"""The coordinators' page as an ASGI app (Starlette), server-rendered with Jinja2 templates.

Routes, relative to wherever it is mounted (``/ui`` in the service):
``GET /`` (to the no-show list), ``GET|POST /login``, ``POST /logout``,
``GET /appointments`` and ``GET /patients`` (filters ``from``, ``to``, ``department``, ``tier``;
``sort``, ``dir``, ``page``, ``size``), ``GET /appointments.csv`` and ``GET /patients.csv`` (the
same filters and order, every page), ``POST /outcomes`` (record a row's outcome: ``serving/worklist.py``),
``GET /worklist.csv`` (the recorded outcomes; ``list``, ``from``, ``to``), ``GET /static/...``.

Nothing here logs a patient identifier; the URLs carry filters only, so access logs hold none. Who saw
which patients goes to the access trail (``carecast/audit.py``) instead. Every POST must come from the
page itself (``Origin``/``Referer``), and logging out and recording an outcome also need the session's CSRF token.
A recorded outcome is stored only together with its access-trail record (one transaction: no record, no outcome);
the trail names who, the outcome and its id, never the note.
"""

from __future__ import annotations

import datetime as dt
import hmac
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from carecast import logs
from carecast.audit import AuditLog, AuditUnavailable
from serving.ui import auth
from serving.ui.data import (
    LISTS,
    PAGE_SIZES,
    TIERS,
    Store,
    apply,
    neutral,
    outcomes_csv,
    page,
    parse_query,
    short,
    to_csv,
    with_outcomes,
)
from serving.worklist import (
    OUTCOMES,
    ROW_KEYS,
    OutcomeStore,
    WorklistError,
    WorklistUnavailable,
    new_outcome,
    open_store,
    purge_and_record,
)

HERE = Path(__file__).parent
log = logs.get("serving.ui")
#: id columns: shown cut to a fixed width with the full value on hover
ID_COLUMNS = ("appointment_id", "patient_id")
#: the list's query parameters a form may carry back (``back``): filters, order and page, never an id
BACK_KEYS = ("from", "to", "department", "tier", "sort", "dir", "page", "size")
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["neutral"] = neutral
    env.filters["short"] = short
    return env


def create_ui_app(settings: Any, store: Store | None = None, accounts: auth.Accounts | None = None,
                  audit: AuditLog | None = None, worklist: OutcomeStore | None = None) -> Starlette:
    """The page for ``settings``: coordinators log in with their own accounts (``carecast users add``), every
    list and export shown is recorded in the access trail first, and each row's outcome is recorded in the worklist
    (``serving/worklist.py``). The service passes the store and trail its runtime built (``serving/runtime.py``).
    Works mounted at any prefix (links use the ASGI ``root_path``)."""
    store = store if store is not None else Store(Path(settings.risk_list_dir))
    accounts = accounts if accounts is not None else auth.Accounts.from_settings(settings)
    trail = audit if audit is not None else AuditLog.from_settings(settings)
    outcomes = worklist if worklist is not None else open_store(settings)
    max_note = int(settings.worklist.max_note_chars)
    trusted = list(settings.accounts.trusted_origins)
    env = _env()

    def base(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def html(request: Request, template: str, status: int = 200, headers: dict[str, str] | None = None,
             **ctx: Any) -> HTMLResponse:
        body = env.get_template(template).render(base=base(request), **ctx)
        return HTMLResponse(body, status_code=status, headers={**_SECURITY_HEADERS, **(headers or {})})

    async def current(request: Request) -> auth.Session | None:
        return await anyio.to_thread.run_sync(accounts.session, request.cookies.get(auth.COOKIE))

    def to_login(request: Request) -> Response:
        return RedirectResponse(f"{base(request)}/login", status_code=303, headers=_SECURITY_HEADERS)

    def cross_origin(request: Request) -> Response | None:
        """403 unless the POST came from this page (Origin, else Referer): no other site can submit our forms."""
        own = f"{request.url.scheme}://{request.url.netloc}"
        if auth.same_origin(request.headers, own, trusted):
            return None
        return html(request, "login.html", status=403, error="This form was sent from another site and was refused.")

    def cookie_path(request: Request) -> str:
        return (base(request) or "") + "/"

    async def purge_due() -> None:
        """The worklist's daily retention purge, run by the page itself when the day's first outcome is recorded (the
        pipeline runs it too): a site whose pipeline stopped must not keep coordinators' notes past retention. A store
        or trail that cannot be written is logged (by kind, nothing of a row) and tried again with the next outcome."""
        try:
            removed, _ = await anyio.to_thread.run_sync(lambda: purge_and_record(outcomes, trail, only_if_due=True))
        except (WorklistUnavailable, AuditUnavailable) as exc:
            log.warning("worklist retention purge not run: %s", type(exc).__name__)
            return
        if removed:
            log.info("worklist retention purge removed %d outcome(s)", removed)

    async def record(request: Request, who: str, what: str, patients: list[str], detail: dict[str, Any]) -> Response | None:
        """The access trail first; when it cannot be written the data is not shown (503, saying why)."""
        try:
            await anyio.to_thread.run_sync(lambda: trail.record(f"user:{who}", what, patients, detail))
        except AuditUnavailable:
            return html(request, "login.html", status=503,
                        error="The access record could not be written, so the list is not shown. Try again shortly.")
        return None

    async def login_page(request: Request) -> Response:
        if await current(request) is not None:
            return RedirectResponse(f"{base(request)}/appointments", status_code=303)
        return html(request, "login.html")

    async def login(request: Request) -> Response:
        refused = cross_origin(request)
        if refused is not None:
            return refused
        form = await request.form()
        name, password = str(form.get("username", "")), str(form.get("password", ""))
        address = request.client.host if request.client else "unknown"
        result = await anyio.to_thread.run_sync(accounts.login, name, password, address)
        if result.outcome == "locked":
            minutes = max(1, -(-result.retry_after // 60))
            return html(request, "login.html", status=429, headers={"Retry-After": str(result.retry_after)},
                        error=f"Too many failed logins for this name or address: try again in {minutes} minute(s), "
                              "or ask an administrator (carecast users unlock).", username=name)
        if result.outcome != "ok" or result.token is None:
            return html(request, "login.html", status=401, error="That user name or password is not valid.",
                        username=name)
        resp = RedirectResponse(f"{base(request)}/appointments", status_code=303, headers=_SECURITY_HEADERS)
        resp.set_cookie(auth.COOKIE, result.token, max_age=int(settings.accounts.session_hours * 3600),
                        path=cookie_path(request), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp

    async def logout(request: Request) -> Response:
        refused = cross_origin(request)
        if refused is not None:
            return refused
        token = request.cookies.get(auth.COOKIE)
        sess = await current(request)
        if sess is not None:
            form = await request.form()
            if not hmac.compare_digest(str(form.get("csrf", "")), sess.csrf):
                return html(request, "login.html", status=403, error="This form is out of date; reload the page.")
            await anyio.to_thread.run_sync(accounts.logout, token)
        resp = to_login(request)
        resp.delete_cookie(auth.COOKIE, path=cookie_path(request), httponly=True, samesite="strict")
        return resp

    async def home(request: Request) -> Response:
        if await current(request) is None:
            return to_login(request)
        return RedirectResponse(f"{base(request)}/appointments", status_code=303)

    def listing(name: str):
        spec = LISTS[name]

        async def view(request: Request) -> Response:
            sess = await current(request)
            if sess is None:
                return to_login(request)
            snap = store.latest()
            if snap is None:
                return html(request, "empty.html", active=name, lists=LISTS, session=sess)
            q = parse_query(request.query_params, name)
            rows = apply(snap.frames[name], q, name)
            shown, pages = page(rows, q)
            filters = {"from": q.start.isoformat() if q.start else "", "to": q.end.isoformat() if q.end else "",
                       "department": q.department, "tier": q.tier}
            keep = {k: v for k, v in filters.items() if v}
            refused = await record(request, sess.user, f"page {name}", shown["patient_id"].astype(str).tolist(),
                                   {"list": snap.folder.name, **keep, "page": q.page, "rows": len(shown)})
            if refused is not None:
                return refused
            latest, worklist_error = await latest_outcomes(name, shown)
            shown = with_outcomes(shown, name, latest)

            def link(**over: Any) -> str:
                params = {**keep, "sort": q.sort, "dir": "desc" if q.desc else "asc", "size": q.size, "page": q.page}
                params.update(over)
                if params.get("sort") == "rank" and params.get("dir") == "asc":
                    params.pop("sort"), params.pop("dir")
                if params.get("size") == 50:
                    params.pop("size")
                if params.get("page") == 1:
                    params.pop("page")
                return f"{base(request)}/{name}" + (f"?{urlencode(params)}" if params else "")

            csv_params = {**keep, **({"sort": q.sort, "dir": "desc" if q.desc else "asc"} if q.sort != "rank" or q.desc else {})}
            back = link().partition("?")[2]   # the recording form returns here: filters, order, page (no id)
            return html(request, "list.html", active=name, lists=LISTS, spec=spec, name=name, q=q, rows=shown,
                        total=len(rows), all_rows=len(snap.frames[name]), pages=pages, link=link,
                        departments=snap.departments[name], tiers=TIERS, page_sizes=PAGE_SIZES, filters=filters,
                        manifest=snap.manifest, session=sess, id_columns=ID_COLUMNS,
                        csv_url=f"{base(request)}/{name}.csv" + (f"?{urlencode(csv_params)}" if csv_params else ""),
                        outcomes=OUTCOMES, row_key=ROW_KEYS[name], back=back, max_note=max_note,
                        worklist_error=worklist_error, worklist_url=f"{base(request)}/worklist.csv?list={name}")

        async def export(request: Request) -> Response:
            sess = await current(request)
            if sess is None:
                return to_login(request)
            snap = store.latest()
            if snap is None:
                return Response("no risk list yet\n", status_code=404, media_type="text/plain")
            q = parse_query(request.query_params, name)
            rows = apply(snap.frames[name], q, name)
            keep = {k: v for k, v in {"from": q.start, "to": q.end, "department": q.department, "tier": q.tier}.items() if v}
            refused = await record(request, sess.user, f"export {name}.csv", rows["patient_id"].astype(str).tolist(),
                                   {"list": snap.folder.name, **keep, "rows": len(rows)})
            if refused is not None:
                return refused
            latest, _ = await latest_outcomes(name, rows)
            rows = with_outcomes(rows, name, latest)
            stamp = snap.manifest.get("as_of", "")[:10]
            return Response(to_csv(rows, name), media_type="text/csv; charset=utf-8",
                            headers={**_SECURITY_HEADERS,
                                     "Content-Disposition": f'attachment; filename="carecast-{name}-{stamp}.csv"'})

        return view, export

    async def latest_outcomes(name: str, rows: Any) -> tuple[dict | None, str | None]:
        """The latest outcome of each row (None and the reason when the worklist cannot be read: the page says so
        instead of showing rows as if nobody had acted on them)."""
        keys = rows[ROW_KEYS[name]].astype(str).tolist()
        try:
            return await anyio.to_thread.run_sync(outcomes.latest, name, keys), None
        except WorklistUnavailable as exc:
            return None, str(exc)

    def message(request: Request, status: int, text: str, sess: auth.Session | None, back: str = "") -> HTMLResponse:
        return html(request, "message.html", status=status, error=text, back=back, lists=LISTS, session=sess)

    async def record_outcome(request: Request) -> Response:
        """Record one row's outcome (the form beside each row), then back to the same place on the list."""
        refused = cross_origin(request)
        if refused is not None:
            return refused
        sess = await current(request)
        if sess is None:
            return to_login(request)
        form = await request.form()
        if not hmac.compare_digest(str(form.get("csrf", "")), sess.csrf):
            return message(request, 403, "This form is out of date; reload the page.", sess)
        name = str(form.get("list", ""))
        if name not in LISTS:
            return message(request, 400, f"list: must be one of {', '.join(LISTS)}", sess)
        kept = [(k, v) for k, v in parse_qsl(str(form.get("back", ""))) if k in BACK_KEYS]
        back = f"{base(request)}/{name}" + (f"?{urlencode(kept)}" if kept else "")
        snap = store.latest()
        if snap is None:
            return message(request, 409, "There is no risk list yet, so there is no row to record.", sess, back)
        frame = snap.frames[name]
        key = str(form.get("row", ""))
        match = frame[frame[ROW_KEYS[name]].astype(str) == key]
        if not key or match.empty:
            return message(request, 409, "row: this row is not on the current list (the lists were refreshed since "
                                         "the page was loaded); reload the page and record it again.", sess, back)
        row = match.iloc[0]
        try:
            outcome = new_outcome(name, str(row["patient_id"]), str(row["appointment_id"]) if name == "appointments"
                                  else None, str(form.get("outcome", "")), str(form.get("note", "")), sess.user,
                                  max_note, corrects=str(form.get("corrects", "")) or None, risk_list=snap.folder.name)
        except WorklistError as exc:
            return message(request, 400, str(exc), sess, back)

        def audit_record() -> None:
            # the trail names who, the outcome and its id: never the note, no id beyond the patient it already keeps
            trail.record(f"user:{sess.user}", f"worklist record {name}", [outcome.patient_id],
                         {"list": snap.folder.name, "outcome": outcome.outcome, "id": outcome.id,
                          "corrects": outcome.corrects, "note": bool(outcome.note)})

        try:
            await anyio.to_thread.run_sync(outcomes.append, outcome, audit_record)
        except AuditUnavailable:
            return message(request, 503, "The access record could not be written, so the outcome was not recorded. "
                                         "Try again shortly.", sess, back)
        except WorklistUnavailable as exc:
            return message(request, 503, f"The outcome was not recorded: {exc}. Try again shortly.", sess, back)
        except WorklistError as exc:
            return message(request, 400, str(exc), sess, back)
        await purge_due()
        return RedirectResponse(f"{back}#r{int(row['rank'])}", status_code=303, headers=_SECURITY_HEADERS)

    async def export_outcomes(request: Request) -> Response:
        """Every recorded outcome (``list``; recorded ``from`` .. ``to``, UTC dates) as CSV, recorded in the trail."""
        sess = await current(request)
        if sess is None:
            return to_login(request)
        q = request.query_params
        name = q.get("list", "") or ""
        if name and name not in LISTS:
            return message(request, 400, f"list: must be one of {', '.join(LISTS)}", sess)
        dates = parse_query({"from": q.get("from"), "to": q.get("to")}, "appointments")
        start, end = dates.start, dates.end
        if dates.problems:
            return message(request, 400, "; ".join(p.replace("; ignored", "") for p in dates.problems), sess)
        until = (end + dt.timedelta(days=1)).isoformat() if end else None
        try:
            rows = await anyio.to_thread.run_sync(lambda: outcomes.rows(name or None, start.isoformat() if start else None,
                                                                        until))
        except WorklistUnavailable as exc:
            return message(request, 503, f"The recorded outcomes could not be read: {exc}.", sess)
        detail = {k: v for k, v in {"list": name, "from": q.get("from"), "to": q.get("to")}.items() if v}
        refused = await record(request, sess.user, "export worklist.csv", [o.patient_id for o in rows],
                               {**detail, "rows": len(rows)})
        if refused is not None:
            return refused
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        text = await anyio.to_thread.run_sync(outcomes_csv, rows)   # seconds for tens of thousands: off the loop
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={**_SECURITY_HEADERS,
                                 "Content-Disposition": f'attachment; filename="carecast-worklist-{stamp}.csv"'})

    routes: list[BaseRoute] = [Route("/", home), Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
              Route("/logout", logout, methods=["POST"]), Route("/outcomes", record_outcome, methods=["POST"]),
              Route("/worklist.csv", export_outcomes)]
    for name in LISTS:
        view, export = listing(name)
        routes += [Route(f"/{name}", view), Route(f"/{name}.csv", export)]
    routes.append(Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"))
    return Starlette(routes=routes)
