"""Run an aiohttp application on its own event loop in a thread, for fakes that blocking code
(exchangelib in actor threads) talks to. Can be stopped and started again on the same port."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading

from aiohttp import web


class ThreadedServer:
    def __init__(
        self, app: web.Application, port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        if port == 0:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            # a server going down does not wait a minute for its clients (aiohttp's default
            # graceful shutdown): a request caught by `stop` fails within a second, as it would
            # against a real server that went away, instead of hanging the client meanwhile
            runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
            self._runner = runner
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(
                runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self.ssl_context
            )
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
            self.app = _fresh(self.app)


def _fresh(app: web.Application) -> web.Application:
    """aiohttp applications are frozen once served; a restart needs a new one with the same
    routes."""
    again = web.Application(client_max_size=app._client_max_size)
    for route in app.router.routes():
        again.router.add_route(route.method, route.resource.canonical, route.handler)
    return again
