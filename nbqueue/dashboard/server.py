"""``nbqueue dashboard``: the dashboard's page and API outside Jupyter, as Jupyter
serves them: on 127.0.0.1 unless told otherwise, behind a token given in the printed URL.

Opening the URL with ``?token=...`` signs the browser in (a signed cookie); a script
sends ``Authorization: token ...`` instead. A POST from the page must carry the
``_xsrf`` cookie's value in an ``X-XSRFToken`` header; one signed in by the header is
no browser's, and needs none.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import socket
from typing import Any

from tornado import httpserver, web

from nbqueue.dashboard.handlers import routes, views

log = logging.getLogger(__name__)

COOKIE = "nbqueue-dashboard"


class TokenHandler(web.RequestHandler):
    """The base of the dashboard's handlers: a user is one who knows the token."""

    def _by_header(self) -> bool:
        given = self.request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "token" and hmac.compare_digest(
            token.strip().encode(), self.settings["nbqueue_token"].encode()
        )

    def get_current_user(self) -> Any:
        if self._by_header():
            return "token"
        given = self.get_query_argument("token", None)
        if given is not None and hmac.compare_digest(
            given.encode(), self.settings["nbqueue_token"].encode()
        ):
            self.set_signed_cookie(COOKIE, "1", httponly=True, samesite="Strict")
            return "token"
        return "cookie" if self.get_signed_cookie(COOKIE) == b"1" else None

    def check_xsrf_cookie(self) -> None:
        if self._by_header():
            return  # a script's request: no browser sends that header by itself
        super().check_xsrf_cookie()

    def set_default_headers(self) -> None:
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")


def application(token: str) -> web.Application:
    """The dashboard's tornado application, whose users know ``token``."""
    return web.Application(
        routes(TokenHandler),
        cookie_secret=secrets.token_bytes(32),
        xsrf_cookies=True,
        nbqueue_token=token,
    )


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


async def serve(
    directories: list[str], host: str = "127.0.0.1", port: int = 8789, token: str | None = None
) -> None:
    """Serve the dashboard until cancelled; print its URL (with the token) first."""
    for directory in directories:
        views().add(directory)
    token = token or secrets.token_urlsafe(24)
    server = httpserver.HTTPServer(application(token))
    if port and not _port_free(host, port):
        log.info("port %d is taken; using a free one", port)
        port = 0
    bound = _bind(server, host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"nbqueue dashboard: http://{shown}:{bound}/nbqueue/?token={token}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.stop()


def _bind(server: httpserver.HTTPServer, host: str, port: int) -> int:
    """Listen on ``host:port`` (0: a free port); return the port."""
    from tornado.netutil import bind_sockets

    sockets = bind_sockets(port, host)
    server.add_sockets(sockets)
    return int(sockets[0].getsockname()[1])
