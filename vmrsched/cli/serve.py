"""`vmrsched serve`: bind the address first, start the service, run the HTTP front end until
SIGTERM or SIGINT, and reload the config on SIGHUP."""

from __future__ import annotations

import argparse
import socket
from typing import TYPE_CHECKING

from vmrsched import config
from vmrsched.cli.common import load

if TYPE_CHECKING:
    import asyncio

    from vmrsched.http.guard import Limits


async def _serve(cfg: config.Config) -> int:
    import asyncio
    import logging
    import signal

    from aiohttp import web

    from vmrsched import service as service_mod
    from vmrsched.errors import ServiceError
    from vmrsched.http.app import create_app
    from vmrsched.http.guard import (
        HEAD_BYTES_PER_CONNECTION,
        Limits,
        RateLimitedLog,
        connection_cap,
        guarded,
        raise_fd_limit,
    )
    from vmrsched.store import StoreInUseError

    log = logging.getLogger("vmrsched")
    server = cfg.server
    # the address first: a port someone else holds must leave the data directory untouched
    try:
        sock = _listening_socket(server.host, server.port)
    except (OSError, OverflowError, ValueError) as exc:
        log.error("cannot listen on %s: %s", server.listen, exc)
        return 1
    try:
        service = service_mod.start(cfg)
    except StoreInUseError as exc:
        sock.close()
        log.error("%s: is another vmrsched serving it?", exc)
        return 1
    except ServiceError as exc:  # the shared database does not answer: one line, not a trace
        sock.close()
        log.error("cannot start: %s", exc.message)
        return 1
    except OSError as exc:  # the data directory cannot be made or written: one line, not a trace
        sock.close()
        log.error(
            "cannot keep state in %s: %s (%s)",
            cfg.data_dir,
            exc.strerror or exc,
            exc.filename or cfg.data_dir,
        )
        return 1
    limits = Limits(
        connection_cap(server.max_connections, raise_fd_limit()), server.header_timeout_seconds
    )
    for name in ("asyncio", "aiohttp.server", "aiohttp.web"):
        logging.getLogger(name).addFilter(RateLimitedLog())
    runner = web.AppRunner(
        create_app(service),
        access_log=None,
        handle_signals=False,
        keepalive_timeout=server.keepalive_timeout_seconds,
        # a head may hold 64 KiB (docs/guarantees.md), one long line of it too; the guard
        # answers 431 past that
        max_line_size=HEAD_BYTES_PER_CONNECTION,
        max_field_size=HEAD_BYTES_PER_CONNECTION,
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    try:
        listener = await loop.create_server(
            guarded(runner.server, limits),  # type: ignore[arg-type]
            sock=sock,
            backlog=512,
        )
    except (OSError, OverflowError, ValueError) as exc:
        log.error("cannot listen on %s: %s", server.listen, exc)
        await runner.cleanup()
        service.stop()
        return 1
    stopping = asyncio.Event()
    reloads: set[asyncio.Task[object]] = set()

    def reload() -> None:
        task: asyncio.Task[object] = loop.create_task(service.reload_async())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info(
        "vmrsched listening on http://%s, data in %s (integrations: %s)",
        cfg.server.listen,
        cfg.data_dir.absolute(),
        ", ".join(service.integration_names()),
    )
    await stopping.wait()
    log.info("shutting down")
    listener.close()
    await _arrivals(limits, loop)
    await runner.cleanup()
    service.stop()  # nothing else runs on the loop any more; flushes queues and stores
    log.info("stopped")
    return 0


ARRIVAL_SECONDS = 1.0  # the longest a stop waits for the requests of connections it took


async def _arrivals(limits: Limits, loop: asyncio.AbstractEventLoop) -> None:
    """Before the HTTP server shuts down, the connections it took whose first request has not
    arrived yet get a moment for it (no longer than ARRIVAL_SECONDS). aiohttp's shutdown
    ignores what a connection sends once it began, so a client that connected just before the
    stop and sent its reservation just after would wait for an answer that never comes, to its
    own timeout; arrived, the request is in progress and the shutdown waits for its answer."""
    import asyncio

    deadline = loop.time() + ARRIVAL_SECONDS
    while limits.waiting and loop.time() < deadline:
        await asyncio.sleep(0.01)


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else starts (SO_REUSEADDR, as
    loop.create_server would set it; an IPv6 literal gets an IPv6 socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from vmrsched import logs

    cfg = load(args.config)
    if cfg is None:
        return 1
    logs.setup(args.log_format or cfg.server.log_format, cfg.server.log_level)
    for warning in cfg.warnings:
        import logging

        logging.getLogger("vmrsched").warning("%s", warning)
    return asyncio.run(_serve(cfg))
