"""Starts the faces process, feeds it once per cycle, takes its commands, restarts it if it dies.

Runs inside the core's cycle, so everything here is non-blocking: a dead, slow or flooded
faces process costs the core at most a queue poll and a dictionary merge per cycle.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from multiprocessing.process import BaseProcess

from appliance.config.schema import SiteConfig
from appliance.runtime.channel import CoreEnd, FacesChannel
from appliance.runtime.core import Core
from appliance.runtime.faces import faces_main

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_TIMEOUT_S = 5.0


class FacesSupervisor:
    def __init__(self, core: Core, config: SiteConfig) -> None:
        self.core = core
        self.config = config
        self._context = multiprocessing.get_context("spawn")
        self.process: BaseProcess | None = None
        self.core_end: CoreEnd | None = None
        self._subscription = core.store.subscribe("faces")
        self._crashes_in_a_row = 0
        self._restart_at: float | None = None
        self._started_at = 0.0

    def start(self) -> None:
        channel = FacesChannel(self._context)
        # A new subscription makes the first batch a full image for the new process.
        self._subscription.close()
        self._subscription = self.core.store.subscribe("faces")
        self.core_end = CoreEnd(channel)
        process = self._context.Process(
            target=faces_main, args=(self.config, channel, os.getpid()), name="faces", daemon=True
        )
        process.start()
        self.process = process
        self._started_at = self.core.clock.monotonic()
        log.info("faces process started (pid %s)", process.pid)

    def on_cycle(self) -> None:
        """Hooked into the core's cycle: liveness, commands in, changes out."""
        if not self._check_alive():
            return
        assert self.core_end is not None  # noqa: S101 - set whenever the process is alive
        for request in self.core_end.take_commands():
            self.core_end.answer(self.core.handle_command(request))
        self.core_end.publish(self._subscription.collect())

    def _check_alive(self) -> bool:
        now = self.core.clock.monotonic()
        if self.process is not None and self.process.is_alive():
            if now - self._started_at > 60.0:
                self._crashes_in_a_row = 0  # it has been up a while: forgive old crashes
            return True
        if self.process is not None:
            log.error(
                "faces process died (exit code %s); control goes on, restarting it",
                self.process.exitcode,
            )
            self._discard()
            self.core.face_restarts += 1
            delay = RESTART_BACKOFF_S[min(self._crashes_in_a_row, len(RESTART_BACKOFF_S) - 1)]
            self._crashes_in_a_row += 1
            self._restart_at = now + delay
        if self._restart_at is not None and now >= self._restart_at:
            self._restart_at = None
            self.start()
        return False

    def _discard(self) -> None:
        if self.core_end is not None:
            self.core_end.channel.close()
        self.core_end = None
        self.process = None

    def stop(self) -> None:
        process = self.process
        if process is not None and process.is_alive():
            process.terminate()
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                log.warning("faces process did not stop in %.0f s; killing it", STOP_TIMEOUT_S)
                process.kill()
                process.join(STOP_TIMEOUT_S)
        self._discard()
        self._subscription.close()
