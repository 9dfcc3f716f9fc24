"""Commands from a face to the core over the real queues: answered by request id, never hanging."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import pytest

from appliance.config import simulated_site_config
from appliance.control.command_types import RejectCode
from appliance.runtime.channel import CoreEnd, FacesChannel, FacesEnd
from appliance.runtime.core import Core
from appliance.runtime.faces import CommandPort, FacesHost


@pytest.fixture
async def port_and_core() -> AsyncIterator[tuple[CommandPort, Core, FacesChannel]]:
    channel = FacesChannel()
    config = simulated_site_config()
    core = Core(config)
    host = FacesHost(config, FacesEnd(channel))
    port = CommandPort(host.end, asyncio.get_running_loop())
    results = threading.Thread(
        target=host._receive_results, args=(asyncio.get_running_loop(), port)
    )
    results.start()
    core_end = CoreEnd(channel)

    async def core_cycles() -> None:  # what the faces supervisor does in each core cycle
        while True:
            for request in core_end.take_commands():
                core_end.answer(core.handle_command(request))
            await asyncio.sleep(0.01)

    serving = asyncio.create_task(core_cycles())
    yield port, core, channel
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    host._stop.set()
    results.join()
    await core.close()
    channel.close()


async def test_accepted_and_rejected_commands_come_back_to_their_callers(
    port_and_core: tuple[CommandPort, Core, FacesChannel],
) -> None:
    port, core, _ = port_and_core
    accepted, rejected = await asyncio.gather(
        port("modbus:127.0.0.1", "set_grid_target", "controller.grid_target", -250.0),
        port("opcua:operator", "set_mode", "controller.mode", 9),
    )
    assert accepted.accepted
    assert core.store.get("controller.grid_target").value == -250.0
    assert not rejected.accepted
    assert rejected.code is RejectCode.OUT_OF_RANGE
    assert accepted.request_id != rejected.request_id


async def test_a_core_that_does_not_answer_gives_unavailable_not_a_hang() -> None:
    channel = FacesChannel()
    try:
        port = CommandPort(FacesEnd(channel), asyncio.get_running_loop())
        async with asyncio.timeout(10):
            result = await port("test", "heartbeat", "heartbeat.counter", 1)
        assert not result.accepted
        assert result.code is RejectCode.UNAVAILABLE
        assert port.timeouts == 1
    finally:
        channel.close()
