"""The faces process: keeps a mirror of the core's samples and serves it to the outside world.

It receives the changed samples once per core cycle over the channel and applies them to its
mirror; the faces (metrics today; OPC UA, Modbus slave and archive plug in here) read the
mirror and send commands back through `FacesEnd`. Whatever load the clients put on this
process, the core's loop does not share its CPU time slice or its event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading

from appliance.config.schema import SiteConfig
from appliance.runtime.channel import FacesChannel, FacesEnd, WireSample, from_wire
from appliance.runtime.site_table import site_point_table
from appliance.store import Sample

log = logging.getLogger(__name__)

BATCH_WAIT_S = 0.25


class FacesHost:
    def __init__(self, config: SiteConfig, end: FacesEnd) -> None:
        self.config = config
        self.end = end
        self.table = site_point_table(config)
        self.mirror: dict[str, Sample] = {}
        self.batches = 0
        self._stop = threading.Event()
        self._parent = os.getppid()

    def apply(self, batch: list[WireSample]) -> None:
        for item in batch:
            point_id, sample = from_wire(item)
            self.mirror[point_id] = sample
        self.batches += 1

    def _receive(self, loop: asyncio.AbstractEventLoop, stopped: asyncio.Event) -> None:
        """Reader thread: blocking queue reads stay off the faces' event loop."""
        while not self._stop.is_set():
            batch = self.end.next_batch(BATCH_WAIT_S)
            if batch is not None:
                loop.call_soon_threadsafe(self.apply, batch)
            if os.getppid() != self._parent:  # the core is gone: nothing left to serve
                log.error("faces: the core process went away; stopping")
                loop.call_soon_threadsafe(stopped.set)
                return

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopped.set)
        receiver = threading.Thread(
            target=self._receive, args=(loop, stopped), name="faces-receiver", daemon=True
        )
        receiver.start()
        metrics = None
        if self.config.faces.metrics.enabled:
            from appliance.northbound.metrics import MetricsFace  # noqa: PLC0415

            metrics = MetricsFace(self.table, self.mirror, self.config.site.id)
            metrics.start(self.config.faces.metrics.bind, self.config.faces.metrics.port)
        try:
            await stopped.wait()
        finally:
            self._stop.set()
            if metrics is not None:
                metrics.stop()
            receiver.join(timeout=2 * BATCH_WAIT_S + 1)
            log.info("faces: stopped")


def faces_main(config: SiteConfig, channel: FacesChannel) -> None:
    """Entry point of the faces process (spawned by the core's supervisor)."""
    # Ctrl-C reaches the whole process group; the core decides when the faces stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=config.logging.level,
        format="%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s",
    )
    asyncio.run(FacesHost(config, FacesEnd(channel)).run())
