"""The faces process: keeps a mirror of the core's samples and serves it to the outside world.

It receives the changed samples once per core cycle over the channel, applies them to its
mirror and hands them to each face (metrics today; OPC UA, Modbus slave and archive plug in
here). Commands from the faces go to the core through `CommandPort` and come back Accepted
or Rejected. Whatever load the clients put on this process, the core's loop shares neither
its event loop nor its interpreter lock with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import threading
from typing import TYPE_CHECKING

from appliance.archive import ArchiveFace
from appliance.config.schema import SiteConfig
from appliance.control.command_types import CommandRequest, CommandResult, RejectCode
from appliance.northbound.face import Face, FaceContext
from appliance.northbound.metrics import FacesTelemetry

if TYPE_CHECKING:
    from appliance.northbound.modbus import ModbusFace
from appliance.runtime.channel import FacesChannel, FacesEnd, WireSample, from_wire
from appliance.runtime.parent import stop_when_parent_exits
from appliance.runtime.site_table import site_point_table
from appliance.store import Sample, Value

log = logging.getLogger(__name__)

BATCH_WAIT_S = 0.25
FACES_NICENESS = 5
FACE_RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)
COMMAND_TIMEOUT_S = 2.0  # four core cycles: a core that has not answered by then is in trouble


class CommandPort:
    """Sends commands to the core and matches the answers to the callers by request id."""

    def __init__(self, end: FacesEnd, loop: asyncio.AbstractEventLoop) -> None:
        self._end = end
        self._loop = loop
        self._waiting: dict[int, asyncio.Future[CommandResult]] = {}
        self.timeouts = 0

    async def __call__(
        self,
        source: str,
        command: str,
        point_id: str | None,
        value: Value | None,
        user: str | None = None,
    ) -> CommandResult:
        request: CommandRequest | None = None
        try:
            request = await asyncio.to_thread(
                self._end.submit, source, command, point_id, value, user
            )
            future: asyncio.Future[CommandResult] = self._loop.create_future()
            self._waiting[request.request_id] = future
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                return await future
        except (TimeoutError, queue.Full) as exc:
            # No answer in time, or the command queue is full: the core is busy or gone.
            self.timeouts += 1
            log.warning("command %s from %s: no answer from the core (%r)", command, source, exc)
            request_id = request.request_id if request is not None else 0
            return CommandResult(
                request_id, False, "the control core did not answer", RejectCode.UNAVAILABLE
            )
        finally:
            if request is not None:
                self._waiting.pop(request.request_id, None)

    def resolve(self, result: CommandResult) -> None:
        future = self._waiting.get(result.request_id)
        if future is not None and not future.done():
            future.set_result(result)


class FacesHost:
    def __init__(self, config: SiteConfig, end: FacesEnd, parent_pid: int | None = None) -> None:
        self.config = config
        self.end = end
        self.table = site_point_table(config)
        self.mirror: dict[str, Sample] = {}
        self.faces: list[Face] = []
        self.telemetry = FacesTelemetry()
        self.batches = 0
        self._stop = threading.Event()
        self._parent_pid = parent_pid

    def apply(self, batch: list[WireSample]) -> None:
        changes = dict(from_wire(item) for item in batch)
        self.mirror.update(changes)
        self.batches += 1
        for face in self.faces:
            face.apply(changes)

    def _receive(self, loop: asyncio.AbstractEventLoop, stopped: asyncio.Event) -> None:
        """Reader thread: blocking queue reads stay off the faces' event loop."""
        while not self._stop.is_set():
            batch = self.end.next_batch(BATCH_WAIT_S)
            if batch is not None:
                loop.call_soon_threadsafe(self.apply, batch)

    def _receive_results(self, loop: asyncio.AbstractEventLoop, port: CommandPort) -> None:
        while not self._stop.is_set():
            result = self.end.next_result(BATCH_WAIT_S)
            if result is not None:
                loop.call_soon_threadsafe(port.resolve, result)

    def build_faces(self, context: FaceContext) -> list[Face]:
        faces: list[Face] = []
        # The archive first: it is the record, and the OPC UA face reads history from it.
        archive = ArchiveFace(context)
        self.telemetry.watch_archive(archive.stats)
        faces.append(archive)
        if self.config.faces.opcua.enabled:
            from appliance.northbound.opcua import OpcUaFace  # noqa: PLC0415

            faces.append(OpcUaFace(context))
            self.telemetry.watch_gauge("opcua_sessions", _opcua_sessions)
        if self.config.faces.modbus.enabled:
            from appliance.northbound.modbus import ModbusFace  # noqa: PLC0415

            modbus = ModbusFace(context)
            faces.append(modbus)
            self.telemetry.watch_counters("modbus_requests", lambda: _modbus_requests(modbus))
            self.telemetry.watch_counters("modbus_exceptions", lambda: _modbus_exceptions(modbus))
        if self.config.faces.metrics.enabled:
            from appliance.northbound.metrics import MetricsFace  # noqa: PLC0415

            faces.append(MetricsFace(context, telemetry=self.telemetry))
        return faces

    async def _start(self, face: Face, started: list[Face]) -> bool:
        """Start one face; a face that cannot start (a port in use) does not stop the others."""
        try:
            await face.start()
        except Exception as exc:  # noqa: BLE001 - any failure of one face is retried, not fatal
            log.error("faces: %s could not start (%s); retrying", face.name, exc)
            self.telemetry.face_running(face.name, False)
            return False
        started.append(face)
        self.faces.append(face)
        self.telemetry.face_running(face.name, True)
        return True

    async def _retry(self, waiting: list[Face], started: list[Face]) -> None:
        delay = FACE_RETRY_S[0]
        for attempt in range(1, 1_000_000):
            await asyncio.sleep(delay)
            waiting = [face for face in waiting if not await self._start(face, started)]
            if not waiting:
                return
            delay = FACE_RETRY_S[min(attempt, len(FACE_RETRY_S) - 1)]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopped.set)
        if self._parent_pid is not None:
            stop_when_parent_exits(self._parent_pid, loop, stopped, "faces")
        port = CommandPort(self.end, loop)
        context = FaceContext(self.config, self.table, self.mirror, self.telemetry.counting(port))
        threads = [
            threading.Thread(
                target=self._receive, args=(loop, stopped), name="faces-updates", daemon=True
            ),
            threading.Thread(
                target=self._receive_results, args=(loop, port), name="faces-results", daemon=True
            ),
        ]
        for thread in threads:
            thread.start()
        started: list[Face] = []
        retrying: asyncio.Task[None] | None = None
        try:
            waiting = [
                face for face in self.build_faces(context) if not await self._start(face, started)
            ]
            if waiting:
                retrying = asyncio.create_task(self._retry(waiting, started), name="faces.retry")
            await stopped.wait()
        finally:
            self._stop.set()
            if retrying is not None:
                retrying.cancel()
                await asyncio.gather(retrying, return_exceptions=True)
            for face in reversed(started):
                await face.stop()
                self.telemetry.face_running(face.name, False)
            for thread in threads:
                thread.join(timeout=2 * BATCH_WAIT_S + 1)
            log.info("faces: stopped")


def _opcua_sessions() -> float:
    from asyncua.server.internal_session import InternalSession  # noqa: PLC0415

    # asyncua counts activated sessions on the class: one server per faces process.
    return float(InternalSession._current_connections)


def _modbus_exceptions(face: ModbusFace) -> dict[str, float]:
    return {f"0x{code:02X}": float(n) for code, n in face.counters.exceptions.items()}


def _modbus_requests(face: ModbusFace) -> dict[str, float]:
    exceptions = sum(face.counters.exceptions.values())
    return {"ok": float(face.counters.requests - exceptions), "exception": float(exceptions)}


def faces_main(config: SiteConfig, channel: FacesChannel, parent_pid: int) -> None:
    """Entry point of the faces process (spawned by the core's supervisor)."""
    # Ctrl-C reaches the whole process group; the core decides when the faces stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Control comes first: when clients keep both cores busy, the scheduler serves the core's
    # cycle before the faces' work (a lower priority, not a limit: idle CPU is still used).
    os.nice(FACES_NICENESS)
    logging.basicConfig(
        level=config.logging.level,
        format="%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s",
    )
    asyncio.run(FacesHost(config, FacesEnd(channel), parent_pid).run())
