"""The dashboard: every store of this user, its clusters, groups, running tasks and
failures, with Stop, Cancel and Retry, in a page that outlives any kernel.

It runs in a web server: Jupyter's (this package is a Jupyter server extension, and
JupyterLab shows the page in its left sidebar, under ``nbqueue``), or the one of
``nbqueue dashboard`` (``server``). ``views`` answers the routes of ``handlers`` from the
store's figures (``nbqueue.figures``); ``static`` holds the page, shared by both.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nbqueue.dashboard"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Add the dashboard's routes to a Jupyter server, behind its authentication."""
    from jupyter_server.base.handlers import APIHandler, JupyterHandler

    from nbqueue.dashboard.handlers import routes

    web_app = serverapp.web_app
    base_url = web_app.settings["base_url"]
    web_app.add_handlers(".*$", routes(APIHandler, base_url, page_base=JupyterHandler))
    serverapp.log.info("nbqueue: the dashboard is at %snbqueue/", web_app.settings["base_url"])
