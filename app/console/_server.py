"""The console's web server (aiohttp): pages, live updates, actions, the token.

With a token, every request must carry it: an ``Authorization: Bearer``
header, or the cookie that ``/?token=...`` (the login form) sets. Without it
the server answers 401 with the login form and shows no data; write actions
are POSTs and need it too (the cookie is ``SameSite=Strict``, so another site
cannot post with it).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from app.workflow import (
    InvalidArgumentError,
    WorkflowError,
    WorkflowNotFoundError,
    WorkflowQuery,
)

from . import _pages as pages
from ._backend import ACTIONS, Backend

log = logging.getLogger("app.console")

COOKIE = "streamflow_token"
POLL_S = 0.5
"""How often a live page's stream looks for a change."""
MESSAGE_MAX = 2000
"""The longest action message (a query's answer) shown after an action."""
_BACKEND: web.AppKey[Backend] = web.AppKey("backend", Backend)
_TOKEN: web.AppKey[str | None] = web.AppKey("token", str)
_STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("streams", set)


def make_app(backend: Backend, token: str | None = None) -> web.Application:
    """The console application over ``backend``; ``token`` protects it when given."""
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise InvalidArgumentError("the console token must be a str of at least 8 characters")
    app = web.Application(middlewares=[_auth])
    app[_BACKEND] = backend
    app[_TOKEN] = token
    app[_STREAMS] = set()
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/", _list)
    app.router.add_get("/workflows/{wid}", _workflow)
    app.router.add_get("/workflows/{wid}/live", _live)
    app.router.add_get("/workflows/{wid}/stream", _stream)
    app.router.add_post("/workflows/{wid}/{action}", _act)
    app.router.add_get("/schedules", _schedules)
    app.router.add_post("/schedules/{sid}/{action}", _schedule_act)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[_TOKEN]
    if token is None:
        return await handler(request)
    given = request.query.get("token")
    if given is not None and request.method == "GET":
        if _same(given, token):
            # keep it in a cookie and drop it from the address bar
            query = {k: v for k, v in request.query.items() if k != "token"}
            target = request.path + (f"?{urlencode(query)}" if query else "")
            response = web.HTTPSeeOther(target)
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
            raise response
        return _refused(request, failed=True)
    header = request.headers.get("Authorization", "")
    bearer = header[7:] if header.startswith("Bearer ") else None
    cookie = request.cookies.get(COOKIE)
    if any(v is not None and _same(v, token) for v in (bearer, cookie)):
        return await handler(request)
    return _refused(request, failed=bearer is not None or cookie is not None)


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def _refused(request: web.Request, *, failed: bool) -> web.Response:
    where = request.app[_BACKEND].where
    return web.Response(
        status=401,
        text=pages.login_page(where, failed),
        content_type="text/html",
        headers={"WWW-Authenticate": 'Bearer realm="streamflow console"'},
    )


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


def query_from(params: Any) -> tuple[WorkflowQuery, dict[str, str]]:
    """The list query of a request's parameters, and the filters to show back."""
    filters = {k: params.get(k, "") for k in ("status", "type", "attrs")}
    attributes: dict[str, Any] = {}
    for pair in filters["attrs"].split():
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise InvalidArgumentError(f"search attributes are name=value pairs, got {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        attributes[name] = value if isinstance(value, str | int | float | bool) else raw
    query = WorkflowQuery(
        status=filters["status"] or None,
        workflow_type=filters["type"] or None,
        search_attributes=attributes,
        page_size=50,
        cursor=params.get("cursor") or None,
    )
    return query, filters


async def _list(request: web.Request) -> web.Response:
    backend = request.app[_BACKEND]
    message = ""
    try:
        query, filters = query_from(request.query)
    except InvalidArgumentError as exc:
        query, filters, message = WorkflowQuery(page_size=50), {}, str(exc)
    page = await backend.list(query)
    counts = await backend.counts()
    return _html(pages.list_page(page, counts, filters, backend.where, message))


async def _workflow(request: web.Request) -> web.Response:
    backend = request.app[_BACKEND]
    try:
        details = await backend.details(request.match_info["wid"])
    except WorkflowNotFoundError as exc:
        body = pages.layout("Not found", backend.where, f'<p class="msg err">{pages.esc(exc)}</p>')
        return _html(body, 404)
    message = request.query.get("msg", "")
    return _html(
        pages.workflow_page(
            details,
            backend.where,
            writable=backend.writable,
            message=message,
            error=request.query.get("error") == "1",
        )
    )


async def _live(request: web.Request) -> web.Response:
    try:
        details = await request.app[_BACKEND].details(request.match_info["wid"])
    except WorkflowNotFoundError as exc:
        return _html(f'<p class="msg err">{pages.esc(exc)}</p>', 404)
    return _html(pages.live_fragment(details))


async def _stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``change`` whenever the run's history or status moves."""
    backend = request.app[_BACKEND]
    wid = request.match_info["wid"]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    streams = request.app[_STREAMS]
    task = asyncio.current_task()
    assert task is not None
    streams.add(task)  # a shutdown ends it rather than waiting for the browser to go
    # what the page was drawn with: a change between drawing it and this stream's
    # start is sent at once rather than missed
    last: str | None = request.query.get("seen")
    try:
        while True:
            try:
                state = (await backend.details(wid)).state
            except WorkflowError:
                break
            seen = pages.live_version(state)
            if last is not None and seen != last:
                await response.write(b"event: change\ndata: {}\n\n")
            last = seen
            await asyncio.sleep(POLL_S)
    except asyncio.CancelledError:
        pass
    finally:
        streams.discard(task)
    return response


async def _end_streams(app: web.Application) -> None:
    streams: set[asyncio.Task[Any]] = app[_STREAMS]
    for task in list(streams):
        task.cancel()


async def _act(request: web.Request) -> web.Response:
    backend = request.app[_BACKEND]
    wid = request.match_info["wid"]
    action = request.match_info["action"]
    base = f"/workflows/{quote(wid, safe='')}"
    if action not in ACTIONS:
        return _html(pages.layout("Unknown", backend.where, "<p>No such action.</p>"), 404)
    if not backend.writable:
        return _html(pages.layout("Read-only", backend.where, "<p>Read-only console.</p>"), 403)
    form: dict[str, Any] = dict(await request.post())
    error = False
    try:
        if action == "signal":
            raw = str(form.get("payload", "")).strip()
            form["payload"] = json.loads(raw) if raw else None
        answer = await backend.act(wid, action, form)
        message = (
            f"query {form.get('name')!s}: {json.dumps(answer, default=str)}"
            if action == "query"
            else f"{action} recorded"
        )
    except (WorkflowError, ValueError, KeyError) as exc:
        message, error = f"{action} failed: {exc}", True
    if len(message) > MESSAGE_MAX:  # it travels in the redirect's address
        message = message[: MESSAGE_MAX - 3] + "..."
    target = f"{base}?{urlencode({'msg': message, **({'error': '1'} if error else {})})}"
    raise web.HTTPSeeOther(target)


async def _schedules(request: web.Request) -> web.Response:
    backend = request.app[_BACKEND]
    found = await backend.schedules()
    body = pages.schedules_page(
        found, backend.where, writable=backend.writable, message=request.query.get("msg", "")
    )
    return _html(body)


async def _schedule_act(request: web.Request) -> web.Response:
    backend = request.app[_BACKEND]
    sid = request.match_info["sid"]
    action = request.match_info["action"]
    if not backend.writable:
        return _html(pages.layout("Read-only", backend.where, "<p>Read-only console.</p>"), 403)
    try:
        await backend.schedule_act(sid, action)
        message = f"{action} recorded for {sid}"
    except (WorkflowError, ValueError) as exc:
        message = f"{action} failed: {exc}"
    raise web.HTTPSeeOther(f"/schedules?{urlencode({'msg': message})}")


async def serve(
    backend: Backend, host: str, port: int, token: str | None, ready: asyncio.Event | None = None
) -> None:
    """Serve the console until cancelled."""
    runner = web.AppRunner(make_app(backend, token), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("console on http://%s:%s (%s)", host, port, backend.where)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
