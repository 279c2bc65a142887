"""The coordinators' page as an ASGI app (Starlette), server-rendered with Jinja2 templates.

Routes, relative to wherever it is mounted (``/ui`` in the service):
``GET /`` (to the no-show list), ``GET|POST /login``, ``POST /logout``,
``GET /appointments`` and ``GET /patients`` (filters ``from``, ``to``, ``department``, ``tier``;
``sort``, ``dir``, ``page``, ``size``), ``GET /appointments.csv`` and ``GET /patients.csv`` (the
same filters and order, every page), ``GET /static/...``.

Nothing here logs a patient identifier; the URLs carry filters only, so access logs hold none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from serving.ui import auth
from serving.ui.data import (
    LISTS,
    PAGE_SIZES,
    TIERS,
    Store,
    apply,
    page,
    parse_query,
    to_csv,
)

HERE = Path(__file__).parent
SESSION_HOURS = 10.0
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    return env


def create_ui_app(settings: Any, api_keys: list[str] | None = None, store: Store | None = None) -> Starlette:
    """The page for ``settings`` (login with one of ``settings.serving.api_keys``; lists from ``store``, by
    default the risk lists under ``settings.risk_list_dir``). The service passes the store its runtime built
    (``serving/runtime.py``). Works mounted at any prefix (links use the ASGI ``root_path``)."""
    keys = list(api_keys if api_keys is not None else settings.serving.api_keys)
    store = store if store is not None else Store(Path(settings.risk_list_dir))
    secret = auth.load_secret(Path(settings.home))
    env = _env()

    def base(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def html(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        body = env.get_template(template).render(base=base(request), **ctx)
        return HTMLResponse(body, status_code=status, headers=_SECURITY_HEADERS)

    def logged_in(request: Request) -> bool:
        return auth.read_cookie(secret, request.cookies.get(auth.COOKIE), keys)

    def to_login(request: Request) -> Response:
        return RedirectResponse(f"{base(request)}/login", status_code=303, headers=_SECURITY_HEADERS)

    async def login_page(request: Request) -> Response:
        if logged_in(request):
            return RedirectResponse(f"{base(request)}/appointments", status_code=303)
        return html(request, "login.html", no_keys=not keys)

    async def login(request: Request) -> Response:
        form = await request.form()
        password = str(form.get("password", ""))
        fp = auth.check_password(password, keys) if password else None
        if fp is None:
            await anyio.sleep(0.2)  # slow down guessing a little
            return html(request, "login.html", status=401, error="That password is not valid.", no_keys=not keys)
        resp = RedirectResponse(f"{base(request)}/appointments", status_code=303, headers=_SECURITY_HEADERS)
        resp.set_cookie(auth.COOKIE, auth.make_cookie(secret, fp, SESSION_HOURS), max_age=int(SESSION_HOURS * 3600),
                        path=(base(request) or "") + "/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp

    async def logout(request: Request) -> Response:
        resp = to_login(request)
        resp.delete_cookie(auth.COOKIE, path=(base(request) or "") + "/", httponly=True, samesite="strict")
        return resp

    async def home(request: Request) -> Response:
        if not logged_in(request):
            return to_login(request)
        return RedirectResponse(f"{base(request)}/appointments", status_code=303)

    def listing(name: str):
        spec = LISTS[name]

        async def view(request: Request) -> Response:
            if not logged_in(request):
                return to_login(request)
            snap = store.latest()
            if snap is None:
                return html(request, "empty.html", active=name, lists=LISTS)
            q = parse_query(request.query_params, name)
            rows = apply(snap.frames[name], q, name)
            shown, pages = page(rows, q)
            filters = {"from": q.start.isoformat() if q.start else "", "to": q.end.isoformat() if q.end else "",
                       "department": q.department, "tier": q.tier}
            keep = {k: v for k, v in filters.items() if v}

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
            return html(request, "list.html", active=name, lists=LISTS, spec=spec, name=name, q=q, rows=shown,
                        total=len(rows), all_rows=len(snap.frames[name]), pages=pages, link=link,
                        departments=snap.departments[name], tiers=TIERS, page_sizes=PAGE_SIZES, filters=filters,
                        manifest=snap.manifest,
                        csv_url=f"{base(request)}/{name}.csv" + (f"?{urlencode(csv_params)}" if csv_params else ""))

        async def export(request: Request) -> Response:
            if not logged_in(request):
                return to_login(request)
            snap = store.latest()
            if snap is None:
                return Response("no risk list yet\n", status_code=404, media_type="text/plain")
            q = parse_query(request.query_params, name)
            rows = apply(snap.frames[name], q, name)
            stamp = snap.manifest.get("as_of", "")[:10]
            return Response(to_csv(rows, name), media_type="text/csv; charset=utf-8",
                            headers={**_SECURITY_HEADERS,
                                     "Content-Disposition": f'attachment; filename="carecast-{name}-{stamp}.csv"'})

        return view, export

    routes: list[BaseRoute] = [Route("/", home), Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
              Route("/logout", logout, methods=["POST"])]
    for name in LISTS:
        view, export = listing(name)
        routes += [Route(f"/{name}", view), Route(f"/{name}.csv", export)]
    routes.append(Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"))
    return Starlette(routes=routes)
