"""Starting and stopping the actor tree of one vmrsched process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

from vmrsched import config as config_mod
from vmrsched.actors.bridge import ask_async
from vmrsched.actors.context import Context
from vmrsched.actors.service import ReloadResult, ServiceSupervisor
from vmrsched.config import Config
from vmrsched.store import lock_directory
from vmrsched.telemetry import Alarms, Metrics

log = logging.getLogger("vmrsched.service")
THREAD_STACK = 512 * 1024  # hundreds of integrations x 3 children must fit


@dataclass
class Service:
    config: Config
    ctx: Context
    supervisor: pykka.ActorRef[ServiceSupervisor]
    lock_fd: int = -1  # the data directory's lock, held while the service runs

    def _load_for_reload(self, path: Path | None) -> Config | None:
        source = path or self.config.path
        if source is None:
            raise ValueError("no config file to reload from")
        try:
            new = config_mod.load(source)
        except config_mod.ConfigError as exc:
            for problem in exc.problems:
                log.error("config reload refused: %s", problem)
            self.ctx.alarms.raise_("service", "config_invalid", "; ".join(exc.problems))
            self.ctx.metrics.config_reloads.labels("invalid").inc()
            return None
        self.ctx.alarms.clear("service", "config_invalid")
        return new

    def reload(self, path: Path | None = None) -> ReloadResult | None:
        """Re-read the config file and apply it. An invalid file keeps the old config running,
        logs every problem and raises the `config_invalid` alarm. Blocking: not for the loop."""
        new = self._load_for_reload(path)
        if new is None:
            return None
        result: ReloadResult = self.supervisor.proxy().reload(new).get(timeout=300)
        return self._applied(new, result)

    async def reload_async(self, path: Path | None = None) -> ReloadResult | None:
        """`reload` for the event loop: the file is read in a worker thread and the supervisor
        answers through a future (bridge.ask_async)."""
        new = await asyncio.to_thread(self._load_for_reload, path)
        if new is None:
            return None
        result: ReloadResult = await ask_async(self.supervisor, new, timeout=300)
        return self._applied(new, result)

    def _applied(self, new: Config, result: ReloadResult) -> ReloadResult:
        self.config = new
        self.ctx.metrics.config_reloads.labels("applied").inc()
        log.info(
            "config reloaded: changed=%s added=%s removed=%s",
            result.changed,
            result.added,
            result.removed,
        )
        return result

    def integration_names(self) -> list[str]:
        return [i.name for i in self.config.integrations]

    def stop(self) -> None:
        """Stop every actor this service started, whether or not its root is still alive."""
        try:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                self.supervisor.stop(block=True, timeout=120)
            for ref in list(self.ctx.supervisors.values()):
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    ref.stop(block=True, timeout=60)
            self.ctx.scheduler.stop()
        finally:
            if self.lock_fd >= 0:
                os.close(self.lock_fd)
                self.lock_fd = -1


def start(config: Config, **context: Any) -> Service:
    data_dir = Path(config.server.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    # one service per data directory, for the life of the process (StoreInUseError otherwise)
    lock_fd = lock_directory(data_dir, f"the data directory {data_dir}")
    threading.stack_size(THREAD_STACK)
    metrics = context.pop("metrics", None) or Metrics()
    ctx = Context(
        server=config.server,
        data_dir=Path(config.server.data_dir),
        metrics=metrics,
        alarms=Alarms(metrics),
        **context,
    )
    ref = ServiceSupervisor.start(config, ctx)
    return Service(config, ctx, ref, lock_fd)
