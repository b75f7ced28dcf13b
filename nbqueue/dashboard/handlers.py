"""The dashboard's routes, as tornado handlers over one base class: Jupyter's (its
authentication and XSRF checks) in the server extension, the token-checking one of
``nbqueue dashboard`` otherwise (``nbqueue.dashboard.server``).

Routes, under the server's base URL::

    GET  nbqueue/                                       the page
    GET  nbqueue/static/panel.js | panel.css | page.js  what the page and JupyterLab load
    GET  nbqueue/api/stores                             [{"id", "directory"}, ...]
    POST nbqueue/api/stores                             {"directory": path}: list a store
    GET  nbqueue/api/stores/<id>                        its figures (figures.StoreFigures)
    GET  nbqueue/api/stores/<id>/tasks/<task>           a task's output and traceback
    POST nbqueue/api/stores/<id>/clusters/<cluster>/stop
    POST nbqueue/api/stores/<id>/tasks/<task>/cancel | retry
    POST nbqueue/api/stores/<id>/groups/<group>/retry

Every handler answers only a user the base class authenticated; a POST passes the base
class's XSRF check. Store reads run in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from tornado import web

from nbqueue.dashboard.views import Views
from nbqueue.errors import DashboardRequestError

log = logging.getLogger(__name__)

STATIC = os.path.join(os.path.dirname(__file__), "static")
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

_views: Views | None = None


def views() -> Views:
    """The one ``Views`` of this server process."""
    global _views
    if _views is None:
        _views = Views()
    return _views


def _signed_in(method: Callable[..., Any]) -> Callable[..., Any]:
    """Answer 403 to a request of no authenticated user (no redirect to a login page)."""

    @functools.wraps(method)
    async def checked(self: web.RequestHandler, *args: Any) -> Any:
        if not self.current_user:
            self.set_status(403)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            message = "not signed in: open the dashboard's URL with its token, or log in"
            self.finish(json.dumps({"ok": False, "message": message}))
            return None
        return await method(self, *args)

    return checked


class _Routes:
    """What every handler of the dashboard does, whatever its base class."""

    async def _answer(self, work: Callable[[], Any]) -> None:
        """Run ``work`` in a thread and write its JSON, or the error it raised."""
        handler: Any = self
        try:
            answer = await asyncio.get_running_loop().run_in_executor(None, work)
        except DashboardRequestError as exc:
            handler.set_status(exc.status)
            answer = {"ok": False, "message": str(exc)}
        except Exception as exc:
            log.exception("dashboard request %s failed", handler.request.path)
            handler.set_status(500)
            answer = {"ok": False, "message": f"{type(exc).__name__}: {exc}"}
        handler.set_header("Content-Type", "application/json; charset=utf-8")
        handler.set_header("Cache-Control", "no-store")
        handler.finish(json.dumps(answer, default=str))


class PageHandler(_Routes):
    @_signed_in
    async def get(self) -> None:
        handler: Any = self
        if not handler.request.path.endswith("/"):  # the page's URLs are relative to it
            handler.redirect(handler.request.path + "/" + _query(handler), permanent=False)
            return
        handler.xsrf_token  # noqa: B018 (sets the _xsrf cookie the page's POSTs send back)
        with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as file:
            page = file.read()
        handler.set_header("Content-Type", "text/html; charset=utf-8")
        handler.set_header("Cache-Control", "no-store")
        handler.finish(page)


class StaticHandler(_Routes):
    @_signed_in
    async def get(self, name: str) -> None:
        handler: Any = self
        path = os.path.join(STATIC, name)
        if name not in ("panel.js", "panel.css", "page.js") or not os.path.isfile(path):
            raise web.HTTPError(404)
        with open(path, "rb") as file:
            body = file.read()
        handler.set_header("Content-Type", _TYPES[os.path.splitext(name)[1]])
        handler.set_header("Cache-Control", "no-cache")
        handler.finish(body)


class StoresHandler(_Routes):
    @_signed_in
    async def get(self) -> None:
        await self._answer(views().stores)

    @_signed_in
    async def post(self) -> None:
        directory = _body(self).get("directory")
        await self._answer(lambda: views().add(directory))


class StoreHandler(_Routes):
    @_signed_in
    async def get(self, sid: str) -> None:
        await self._answer(lambda: views().store(sid))


class TaskHandler(_Routes):
    @_signed_in
    async def get(self, sid: str, task_id: str) -> None:
        await self._answer(lambda: views().task(sid, task_id))


class ActionHandler(_Routes):
    """POST .../clusters/<id>/stop, .../tasks/<id>/cancel|retry, .../groups/<name>/retry."""

    @_signed_in
    async def post(self, sid: str, kind: str, name: str, action: str) -> None:
        act: dict[tuple[str, str], Callable[[str, str], Any]] = {
            ("clusters", "stop"): views().stop,
            ("tasks", "cancel"): views().cancel,
            ("tasks", "retry"): views().retry,
            ("groups", "retry"): views().retry_group,
        }
        work = act.get((kind, action))
        if work is None:
            raise web.HTTPError(404)
        await self._answer(lambda: work(sid, name))


def _query(handler: Any) -> str:
    query = handler.request.query
    return "?" + query if query else ""


def _body(handler: Any) -> dict[str, Any]:
    try:
        body = json.loads(handler.request.body or b"{}")
    except ValueError:
        raise web.HTTPError(400, "the request's body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPError(400, "the request's body is not a JSON object")
    return body


def routes(
    base: type, base_url: str = "/", page_base: type | None = None
) -> list[tuple[str, type]]:
    """The dashboard's routes under ``base_url``, each handler made on ``base``, or on
    ``page_base`` for the page and its files (Jupyter's API handlers answer only JSON)."""
    prefix = base_url.rstrip("/") + "/nbqueue"
    store = prefix + "/api/stores/([0-9a-f]{16})"
    table: list[tuple[str, type]] = [
        (prefix + "/?", PageHandler),
        (prefix + "/static/([a-z]+\\.(?:js|css))", StaticHandler),
        (prefix + "/api/stores", StoresHandler),
        (store, StoreHandler),
        (store + "/tasks/([^/]+)", TaskHandler),
        (store + "/(clusters|tasks|groups)/(.+)/(stop|cancel|retry)", ActionHandler),
    ]
    pages = (PageHandler, StaticHandler)
    return [
        (path, type(cls.__name__, (cls, (page_base or base) if cls in pages else base), {}))
        for path, cls in table
    ]
