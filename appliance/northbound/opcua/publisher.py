"""Publishing samples into the address space without holding up the faces' event loop.

`submit` is what `Face.apply` calls once per core cycle: it only records the changed samples
(the newest per point wins, so a slow cycle coalesces instead of queueing) and makes sure
one writer task is running. The writer skips samples whose value and quality did not change
(OPC 10000-4 §7.7.3: the SourceTimestamp is the time of the last change of value or status),
writes through the address space directly (`AddressSpace.write_attribute_value`: no
service, no Node object, and it returns the StatusCode that asyncua's `Server` wrapper
drops), and yields to the event loop every `YIELD_EVERY` writes, because each write runs
every subscriber's data-change callback inline (about 39 µs per subscriber,
shared/reference/performance-baselines.md §2).

No write API avoids the main cost inside that callback: asyncua deep-copies the DataValue
for every monitored item (`MonitoredItemValues.set_current_datavalue`), about 80 % of the
time of a burst. `share_scalar_values` replaces that copy with a reference when the value
is an immutable scalar, which every point value is. Measured with the 1083 Double points of
the full table changing at once and 5 subscribed sessions (clients in the same process, the
2-vCPU test VM): a burst took 243 / 282 / 613 ms (min / median / max of 8) with the copy and
52 / 66 / 306 ms without it, with the same 48735 notifications delivered. Structures and
arrays are still deep-copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from asyncua import ua
from asyncua.server import monitored_item_service
from asyncua.server.address_space import AddressSpace

from appliance.northbound.opcua.quality import (
    NULL,
    Binding,
    ConversionError,
    data_value,
    text_value,
)
from appliance.northbound.opcua.uatypes import AttributeIds, StatusCodes
from appliance.northbound.opcua.uatypes import data_value as make_value
from appliance.store import Quality, Sample, Value

log = logging.getLogger(__name__)

YIELD_EVERY = 64


class Publisher:
    def __init__(
        self,
        aspace: AddressSpace,
        bindings: Mapping[str, Binding],
        clock: Callable[[], datetime],
        after_batch: Callable[[frozenset[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._aspace = aspace
        self._bindings = bindings
        self._clock = clock
        self._after_batch = after_batch
        self._pending: dict[str, Sample] = {}
        self._last: dict[str, tuple[Value | None, Quality]] = {}
        self._task: asyncio.Task[None] | None = None
        self._failed: set[str] = set()
        self.written = 0
        self.unchanged = 0
        self.errors = 0

    def submit(self, changes: Mapping[str, Sample]) -> None:
        """Record the changed samples of one core cycle; must be called on the event loop."""
        for point_id, sample in changes.items():
            if point_id in self._bindings:
                self._pending[point_id] = sample
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="opcua-publisher")

    @property
    def busy(self) -> bool:
        return bool(self._pending) or (self._task is not None and not self._task.done())

    async def drain(self) -> None:
        """Wait until everything submitted so far is in the address space."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pending.clear()

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            await self._write_batch(batch)
            if self._after_batch is not None:
                try:
                    await self._after_batch(frozenset(batch))
                except Exception:
                    log.exception("opcua: after-publish step failed")

    async def _write_batch(self, batch: dict[str, Sample]) -> None:
        now = self._clock()
        writes = 0
        for point_id, sample in batch.items():
            key = (sample.value, sample.quality)
            if self._last.get(point_id) == key:
                self.unchanged += 1
                continue
            if writes and writes % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            writes += 1
            if await self._write(self._bindings[point_id], sample, now):
                self._last[point_id] = key

    async def _write(self, binding: Binding, sample: Sample, now: datetime) -> bool:
        point_id = binding.point.id
        failure: str | None = None
        try:
            value = data_value(binding, sample, now)
        except ConversionError as exc:
            # The variable must not keep showing an older value as if it were current.
            value = make_value(NULL, StatusCodes.BadDataEncodingInvalid, server=now)
            failure = f"value {sample.value!r} not representable: {exc}"
        try:
            status = await self._aspace.write_attribute_value(
                binding.node_id, AttributeIds.Value, value
            )
            if binding.text_node_id is not None:
                await self._aspace.write_attribute_value(
                    binding.text_node_id, AttributeIds.Value, text_value(binding, sample, now)
                )
        except Exception:
            self.errors += 1
            log.exception("opcua: publishing %s failed", point_id)
            return False
        if not status.is_good():
            self._report(point_id, f"address space refused the write: {status.name}")
            return False
        if failure is not None:
            self._report(point_id, failure)
            return True
        self.written += 1
        self._failed.discard(point_id)
        return True

    def _report(self, point_id: str, message: str) -> None:
        """Count every failure; log it once per point until the point publishes again."""
        self.errors += 1
        if point_id not in self._failed:
            self._failed.add(point_id)
            log.error("opcua: %s: %s", point_id, message)


# --------------------------------------------------------------------------- asyncua patch

_IMMUTABLE_SCALARS = (bool, int, float, str, bytes, datetime, type(None))
_STOCK_SET_CURRENT = monitored_item_service.MonitoredItemValues.set_current_datavalue


def _set_current_datavalue(self: Any, cur_val: ua.DataValue) -> None:
    self.old_dvalue = self.current_dvalue
    variant = cur_val.Value
    if variant is None or (not variant.is_array and isinstance(variant.Value, _IMMUTABLE_SCALARS)):
        # Every writer hands the address space a new DataValue and never changes it
        # afterwards (asyncua's services build new ones too), so a reference is as good
        # as a copy here.
        self.current_dvalue = cur_val
    else:
        self.current_dvalue = copy.deepcopy(cur_val)


def share_scalar_values(enabled: bool = True) -> None:
    """Install (or with False remove) the scalar fast path; process-wide, idempotent."""
    target = _set_current_datavalue if enabled else _STOCK_SET_CURRENT
    monitored_item_service.MonitoredItemValues.set_current_datavalue = target  # type: ignore[method-assign]
