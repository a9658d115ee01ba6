"""Notifier: the sole sender of replies and organizer updates. Messages arrive in a durable
queue (fsynced before `enqueue` returns) and leave it only after the gateway accepted them;
failures are retried with exponential backoff and raise `mailbox_unreachable`."""

from __future__ import annotations

import logging
from typing import Any

from vmrsched.actors.child import SupervisedChild
from vmrsched.actors.messages import Flush
from vmrsched.mailbox.base import Gateway, GatewayError, Outgoing
from vmrsched.outqueue import OutQueue

log = logging.getLogger("vmrsched.notifier")

CHUNK = 200
ALARM = "mailbox_unreachable"


class Notifier(SupervisedChild):
    role = "notifier"

    def __init__(self, *args: Any, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self.alarm: str = getattr(gateway, "alarm", ALARM)
        self._flush_queued = False
        self._backoff = 0.0
        self._raised = self.alarm

    def setup(self) -> None:
        self.queue = OutQueue(self.ctx.queue_dir(self.integ.name))
        self._request_flush()

    def teardown(self) -> None:
        queue = getattr(self, "queue", None)
        if queue is not None:
            queue.close()
            self.queue = None  # type: ignore[assignment]

    def enqueue(self, messages: list[Outgoing]) -> int:
        """Queue durably; returns once fsynced. Delivery happens afterwards."""
        if messages:
            self.queue.add(messages)
            self._request_flush()
        return len(self.queue)

    def pending(self) -> int:
        return len(self.queue)

    def _request_flush(self) -> None:
        if not self._flush_queued and self._backoff == 0.0:
            self._flush_queued = True
            self.actor_ref.tell(Flush())

    def _retry_later(self) -> None:
        self._flush_queued = False
        self.actor_ref.tell(Flush())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Flush):
            self._flush_queued = False
            self._flush()
        return None

    def _flush(self) -> None:
        sent: list[str] = []
        try:
            for outgoing in self.queue.pending()[:CHUNK]:
                self.gateway.send(outgoing)
                sent.append(outgoing.id)
        except GatewayError as exc:
            self._record(sent)
            delay = exc.retry_after or min(60.0, max(0.5, self._backoff * 2))
            self._backoff = delay
            self._raised = exc.alarm or self.alarm
            self.ctx.alarms.raise_(self.integ.name, self._raised, str(exc))
            log.warning(
                "sending failed, retrying in %.1fs: %s",
                delay,
                exc,
                extra={"integration": self.integ.name},
            )
            self._flush_queued = True
            self.ctx.scheduler.call_later(delay, self._retry_later)
            return
        self._record(sent)
        if self._backoff:
            self._backoff = 0.0
            self.ctx.alarms.clear(self.integ.name, self._raised)
        if len(self.queue):
            self._request_flush()

    def _record(self, sent: list[str]) -> None:
        if not sent:
            return
        sync = getattr(self.gateway, "sync", None)
        if sync is not None:
            sync()
        self.queue.done(sent)
