"""The boundary between the control core and the faces process.

Once per cycle the core hands the faces the samples that changed (value, timestamp,
quality); the faces send commands back with a request id and get Accepted / Rejected with a
reason. The core never blocks on this boundary: if the faces have not taken the previous
batch yet, the new changes are merged into it (one sample per point, the latest) and the
merge is counted, so a slow or stuck face costs the core a dictionary update, never a wait,
and memory stays bounded by the number of points.

A fresh channel is made for every start of the faces process, so a face that died while
holding a queue lock cannot wedge the next one.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
from multiprocessing.context import SpawnContext
from typing import Any

from appliance.control.command_types import CommandRequest, CommandResult, RejectCode
from appliance.store import Quality, Sample, Value

__all__ = ["CommandRequest", "CommandResult", "CoreEnd", "FacesChannel", "FacesEnd", "RejectCode"]

# id, value, UTC timestamp, quality name: a tuple pickles several times faster than a dataclass.
WireSample = tuple[str, Value | None, float, str]

UPDATE_QUEUE_DEPTH = 2  # batches in flight; beyond this the core coalesces
COMMAND_QUEUE_DEPTH = 256


def to_wire(changes: dict[str, Sample]) -> list[WireSample]:
    return [(pid, s.value, s.timestamp, s.quality.value) for pid, s in changes.items()]


def from_wire(item: WireSample) -> tuple[str, Sample]:
    point_id, value, timestamp, quality = item
    return point_id, Sample(value, timestamp, Quality(quality), 0.0)


class FacesChannel:
    """Queues between one incarnation of the faces process and the core."""

    def __init__(self, context: SpawnContext | None = None) -> None:
        ctx = context or multiprocessing.get_context("spawn")
        self.updates: Any = ctx.Queue(UPDATE_QUEUE_DEPTH)
        self.commands: Any = ctx.Queue(COMMAND_QUEUE_DEPTH)
        self.results: Any = ctx.Queue(COMMAND_QUEUE_DEPTH)

    def close(self) -> None:
        for q in (self.updates, self.commands, self.results):
            q.cancel_join_thread()  # never block the core's exit on a dead reader
            q.close()


class CoreEnd:
    """The core's side: publish without blocking, drain commands, answer them."""

    def __init__(self, channel: FacesChannel) -> None:
        self.channel = channel
        self._pending: dict[str, Sample] = {}
        self.batches_sent = 0
        self.batches_coalesced = 0  # cycles whose changes were merged into a waiting batch
        self.results_dropped = 0

    def publish(self, changes: dict[str, Sample]) -> bool:
        """Queue this cycle's changes; True if a batch left, False if they were coalesced."""
        self._pending.update(changes)
        if not self._pending:
            return True
        try:
            self.channel.updates.put_nowait(to_wire(self._pending))
        except queue.Full:
            self.batches_coalesced += 1
            return False
        self._pending = {}
        self.batches_sent += 1
        return True

    def take_commands(self, limit: int = 64) -> list[CommandRequest]:
        """Up to `limit` waiting commands; bounded so a command flood cannot stretch a cycle."""
        taken: list[CommandRequest] = []
        for _ in range(limit):
            try:
                taken.append(self.channel.commands.get_nowait())
            except queue.Empty:
                break
        return taken

    def answer(self, result: CommandResult) -> None:
        try:
            self.channel.results.put_nowait(result)
        except queue.Full:
            # The faces stopped reading results; their callers time out with UNAVAILABLE.
            self.results_dropped += 1


class FacesEnd:
    """The faces' side: receive batches, submit commands (thread-safe id allocation)."""

    def __init__(self, channel: FacesChannel) -> None:
        self.channel = channel
        self._ids = itertools.count(1)

    def next_batch(self, timeout_s: float) -> list[WireSample] | None:
        try:
            batch: list[WireSample] = self.channel.updates.get(timeout=timeout_s)
        except queue.Empty:
            return None
        return batch

    def submit(
        self,
        source: str,
        command: str,
        point_id: str | None,
        value: Value | None,
        user: str | None = None,
    ) -> CommandRequest:
        request = CommandRequest(next(self._ids), source, command, point_id, value, user)
        self.channel.commands.put(request, timeout=1.0)
        return request

    def next_result(self, timeout_s: float) -> CommandResult | None:
        try:
            result: CommandResult = self.channel.results.get(timeout=timeout_s)
        except queue.Empty:
            return None
        return result
