"""Connection limits in front of aiohttp: a cap on open connections, a deadline for the first
request's headers, and a reserve of file descriptors the mailbox side can always use.

aiohttp closes idle keep-alive connections (keepalive_timeout) but waits for a new connection's
first request without limit, so 20,000 silent connections used to exhaust the process's file
descriptors: health checks timed out and the mailbox could not open its files. Here a connection
is closed when its first request's headers have not arrived by the deadline, and at the cap the
oldest connection still waiting for its first request is shed to make room (nginx drains idle
connections the same way), so a new request is served even while the cap is full of silent or
slow clients. What a connection may send before its headers end is bounded too, per connection
and in total (aiohttp buffers it): 1,000 connections half-sending a megabyte of headers each
used to take the process from 431 MB to 1.8 GB for good.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vmrsched.http")
FD_RESERVE = 512  # descriptors kept for stores, spool files, Exchange connections, logs
HEAD_BYTES_PER_CONNECTION = 64 * 1024  # more before the headers end: not an HTTP client of ours
HEAD_BYTES_TOTAL = 16 * 1024 * 1024  # over all waiting connections; the oldest are shed past it
_HEAD_ERROR = (
    b'{"error": {"code": "headers_too_large", "message": "a request\'s head may hold '
    + str(HEAD_BYTES_PER_CONNECTION).encode()
    + b' bytes"}}'
)
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    + f"Content-Length: {len(_HEAD_ERROR)}\r\n".encode()
    + b"Connection: close\r\n\r\n"
    + _HEAD_ERROR
)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(configured: int, fd_limit: int) -> int:
    """The configured cap, lowered so that FD_RESERVE descriptors always stay free."""
    return max(16, min(configured, fd_limit - FD_RESERVE))


class Limits:
    def __init__(self, cap: int, header_timeout: float) -> None:
        self.cap = cap
        self.header_timeout = header_timeout
        self.active = 0
        self.refused = 0
        self.timed_out = 0
        self.shed = 0
        self.head_bytes = 0  # received before their headers ended, over all waiting connections
        # connections still waiting for their first request's headers, oldest first
        self.waiting: dict[_Guard, None] = {}
        self._last_report = 0.0

    def shed_oldest(self) -> bool:
        """Close the connection that has waited longest for its first request; False when
        every open connection is serving a request."""
        for guard in self.waiting:
            self.shed += 1
            guard.head_done()  # out of `waiting` and the byte count now, not when lost
            guard.close()
            return True
        return False

    def report(self) -> None:
        """At most one log line per 10 s however many connections are refused."""
        now = time.monotonic()
        if now - self._last_report >= 10.0:
            self._last_report = now
            log.warning(
                "connection limits: %d open (cap %d); refused %d, closed %d without a request "
                "in %.0f s, shed %d waiting ones so far",
                self.active,
                self.cap,
                self.refused,
                self.timed_out,
                self.header_timeout,
                self.shed,
            )


class _Guard(asyncio.Protocol):
    """Stands between the transport and aiohttp's request handler."""

    def __init__(self, inner: Any, limits: Limits, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self.limits = limits
        self.loop = loop
        self.counted = False
        self.timer: asyncio.TimerHandle | None = None
        self.head = b""
        self.received = 0  # bytes before the first request's headers ended
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limits = self.limits
        if limits.active >= limits.cap and not limits.shed_oldest():
            limits.refused += 1
            limits.report()
            _abort(transport)
            return
        limits.active += 1
        self.counted = True
        self.transport = transport
        self.timer = self.loop.call_later(limits.header_timeout, self._too_slow)
        limits.waiting[self] = None
        self.inner.connection_made(transport)

    def close(self) -> None:
        if self.transport is not None:
            self.limits.report()
            _abort(self.transport)

    def head_too_large(self) -> None:
        """431 in the API's JSON, then the connection closed: a head over the limit is not
        read further (docs/guarantees.md: a request's head may hold 64 KiB)."""
        transport = self.transport
        if transport is None:
            return
        self.limits.report()
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(HEAD_TOO_LARGE)
        transport.close()

    def _too_slow(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.limits.timed_out += 1
            self.close()

    def head_done(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.head = b""
        self.limits.head_bytes -= self.received
        self.received = 0
        self.limits.waiting.pop(self, None)

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            # the headers' end is looked for in the whole chunk (a body sent with its headers
            # may follow them in the same read); only the last 3 bytes are kept, for an end
            # that straddles two reads
            seen = self.head + data
            end = seen.find(b"\r\n\r\n")
            if end >= 0:  # the first request's headers are complete
                head = self.received + end + 4 - len(self.head)
                if head > HEAD_BYTES_PER_CONNECTION:  # docs/guarantees.md: a head holds 64 KiB
                    self.head_too_large()
                    return
                self.head_done()
            else:
                self.head = seen[-3:]
                self.received += len(data)
                self.limits.head_bytes += len(data)
                if self.received > HEAD_BYTES_PER_CONNECTION:
                    self.head_too_large()
                    return
                while self.limits.head_bytes > HEAD_BYTES_TOTAL and self.limits.shed_oldest():
                    pass
                if self.transport is None or self.transport.is_closing():
                    return
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.counted:
            return
        self.counted = False
        self.limits.active -= 1
        self.head_done()
        self.transport = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _abort(transport: asyncio.BaseTransport) -> None:
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()  # no lingering close for a connection we do not want
    else:
        transport.close()


def guarded(factory: Callable[[], Any], limits: Limits) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for loop.create_server that applies `limits` around `factory`."""
    loop = asyncio.get_running_loop()

    def make() -> asyncio.Protocol:
        return _Guard(factory(), limits, loop)

    return make


class RateLimitedLog(logging.Filter):
    """Lets the same message through at most once per `seconds` (asyncio logs every failed
    accept() when descriptors run out: hundreds of megabytes a minute otherwise)."""

    def __init__(self, seconds: float = 10.0) -> None:
        super().__init__()
        self.seconds = seconds
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.msg}"
        now = time.monotonic()
        if now - self._seen.get(key, -self.seconds) < self.seconds:
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = now
        return True
