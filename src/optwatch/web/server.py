"""The dashboard in a browser: ``optwatch attach --web`` and ``optwatch run --web``.

textual-serve starts one ``optwatch attach`` process per browser tab (``web.tab``) and streams its screen over a
websocket, so every tab, key and control works as in a terminal. That process attaches to the job like
any other viewer: closing the page, or stopping this server, changes nothing for the job.

textual-serve has no authentication of its own. Every request, HTTP or websocket, passes ``_check_token``
first: without the right token (in the URL that ``serve`` announces, or in the cookie that the first good
request sets, as Jupyter does) it gets a 403 and nothing else. The server binds to 127.0.0.1 unless told
otherwise; SSH port forwarding is the way in from another machine. No torch and no textual here: the
dashboard runs in the processes textual-serve starts.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Callable

from aiohttp import web
from textual_serve.server import Server

from optwatch.options import ENV_TOKEN
from optwatch.web.tab import ENV_SERVER_PID
from optwatch.wire.runtime import new_token

DEFAULT_PORT = 8000
STOP_TIMEOUT_S = 10.0
"""How long the open pages' dashboards get to quit when the server stops."""

REFUSED = "optwatch: refused: open the URL with its token, as `optwatch ... --web` printed it\n"


class DashboardServer(Server):
    """textual-serve's server, behind a token, serving ``optwatch attach TARGET`` to each page."""

    def __init__(self, target: str, *, host: str, port: int, token: str | None = None):
        # exec: the tab's process is the server's own child, not a shell's (see web.tab)
        command = "exec " + shlex.join([sys.executable, "-m", "optwatch.web.tab", target])
        super().__init__(command, host=host, port=port, title=f"optwatch {target}")
        self.web_token = new_token()
        self.job_token = token
        # Cookies are shared by every port of a host: a name of its own per server keeps two apart.
        self.cookie = f"optwatch-web-{secrets.token_hex(4)}"
        self._pages: set[asyncio.Task] = set()

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._check_token)
        return app

    @web.middleware
    async def _check_token(self, request: web.Request, handler) -> web.StreamResponse:
        given = request.query.get("token") or request.cookies.get(self.cookie) or ""
        if not hmac.compare_digest(given.encode(), self.web_token.encode()):
            return web.Response(status=403, text=REFUSED)
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            # A page from elsewhere opening our websocket with the user's cookie (cross-site websocket hijacking).
            return web.Response(status=403, text=REFUSED)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            page = asyncio.current_task()
            self._pages.add(page)
            try:
                return await handler(request)
            finally:
                self._pages.discard(page)
        response = await handler(request)
        if request.cookies.get(self.cookie) != self.web_token:
            response.set_cookie(self.cookie, self.web_token, httponly=True, samesite="Strict", path="/")
        # The URL carries the token: no Referer with it, no copy in a cache, no framing by another site. The
        # page's own link to a web font is not followed either: nothing leaves this server's origin.
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = (
            f"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            f"img-src 'self' data:; connect-src 'self' ws://{request.host}; frame-ancestors 'none'"
        )
        return response

    async def handle_index(self, request: web.Request):
        # The page's websocket and static URLs point back where the browser reached us, which is not where
        # we listen behind an SSH tunnel to another local port.
        self.public_url = f"{request.scheme}://{request.host}"
        return await super().handle_index(request)

    async def on_startup(self, app: web.Application) -> None:
        """Nothing to print: ``serve`` announces the URL."""

    async def run(self, announce: Callable[[str], None], duration_s: float | None = None) -> None:
        """Serve until SIGINT or SIGTERM (or ``duration_s``); ``announce`` gets the URL to open."""
        # For the dashboards started from here (textual-serve gives them this environment): a token never on
        # their command line, where every local user could read it.
        if self.job_token:
            os.environ[ENV_TOKEN] = self.job_token
        os.environ[ENV_SERVER_PID] = str(os.getpid())
        runner = web.AppRunner(await self._make_app(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            host, port = runner.addresses[0][:2]
            shown = self.host if self.host not in ("0.0.0.0", "::", "") else host
            shown = f"[{shown}]" if ":" in shown else shown
            announce(f"http://{shown}:{port}/?token={self.web_token}")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            try:
                await asyncio.wait_for(stop.wait(), duration_s)
            except asyncio.TimeoutError:
                pass
            await self._close_pages()
        finally:
            await runner.cleanup()

    async def _close_pages(self) -> None:
        """Each open page's dashboard is told to quit (it leaves the job running) and awaited, briefly."""
        pages = list(self._pages)
        for page in pages:
            page.cancel()
        if pages:
            await asyncio.wait(pages, timeout=STOP_TIMEOUT_S)


def serve(
    target: str,
    *,
    host: str,
    port: int | None = None,
    token: str | None = None,
    duration_s: float | None = None,
    announce: Callable[[str], None],
) -> None:
    """Serve the dashboard of the job ``target`` (a run id, or HOST:PORT with the job's ``token``) on
    ``host:port`` until interrupted: port 0 is a free one; None is DEFAULT_PORT, or a free one when that is
    taken. Raises OSError when the address cannot be bound."""

    def run(port: int) -> None:
        asyncio.run(DashboardServer(target, host=host, port=port, token=token).run(announce, duration_s))

    try:
        run(DEFAULT_PORT if port is None else port)
    except OSError as exc:
        if port is not None or exc.errno != errno.EADDRINUSE:
            raise
        run(0)
