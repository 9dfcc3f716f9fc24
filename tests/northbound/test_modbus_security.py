"""The face's TCP security keys: allowed and write networks, read-only, connection limit, idle timeout.

Only 127.0.0.1 is available to the tests, so "another network" is a configuration that
leaves 127.0.0.1 out.
"""

from __future__ import annotations

import asyncio
import struct

from tests.northbound.test_modbus_support import (
    RawClient,
    raw_client,
    read_pdu,
    running_site,
    words_of,
)

HEARTBEAT = 1600
WRITE_HEARTBEAT = struct.pack(">BHH", 6, HEARTBEAT, 3)
SUNS = [0x5375, 0x6E53]


async def test_a_client_outside_allowed_networks_is_disconnected_at_connect() -> None:
    async with running_site(allowed_networks=("10.0.0.0/8", "::1/128")) as site:
        async with raw_client(site.port) as raw:
            raw.writer.write(raw.frame(1, read_pdu(3, 40000, 2)))
            assert await raw.closed_by_server()
        assert site.face.counters.connections_refused == 1
        assert site.face.counters.requests == 0


async def test_writes_from_outside_write_networks_answer_01_and_reads_are_served() -> None:
    async with (
        running_site(write_networks=("192.168.0.0/16",)) as site,
        raw_client(site.port) as raw,
    ):
        assert words_of(await raw.request(1, read_pdu(3, 40000, 2))) == SUNS
        assert await raw.request(1, WRITE_HEARTBEAT) == bytes([0x86, 0x01])
        coil = struct.pack(">BHH", 5, 1703, 0xFF00)
        assert await raw.request(1, coil) == bytes([0x85, 0x01])
        assert site.core.requests == []


async def test_read_only_refuses_every_write_with_01() -> None:
    async with running_site(read_only=True) as site, raw_client(site.port) as raw:
        site.set("heartbeat.counter", 2)
        assert await raw.request(1, WRITE_HEARTBEAT) == bytes([0x86, 0x01])
        assert words_of(await raw.request(1, read_pdu(3, HEARTBEAT, 1))) == [2]
        assert site.core.requests == []


async def test_default_write_networks_let_loopback_write() -> None:
    async with running_site() as site, raw_client(site.port) as raw:
        assert await raw.request(1, WRITE_HEARTBEAT) == WRITE_HEARTBEAT
        assert site.core.applied() == [("heartbeat", "heartbeat.counter", 3)]


async def test_one_connection_over_the_limit_is_closed_and_the_others_served() -> None:
    async with running_site(max_connections=2) as site:
        first, second = await RawClient.open(site.port), await RawClient.open(site.port)
        try:
            assert words_of(await first.request(1, read_pdu(3, 40000, 2))) == SUNS
            assert words_of(await second.request(1, read_pdu(3, 40000, 2))) == SUNS
            async with raw_client(site.port) as third:
                assert await third.closed_by_server()
            assert words_of(await first.request(1, read_pdu(3, 40000, 2))) == SUNS
        finally:
            await first.close()
            await second.close()
        for _ in range(100):  # the server sees the two closes shortly after
            if site.face.connection_count == 0:
                break
            await asyncio.sleep(0.01)
        assert site.face.connection_count == 0
        async with raw_client(site.port) as again:
            assert words_of(await again.request(1, read_pdu(3, 40000, 2))) == SUNS
        assert site.face.counters.connections_refused == 1


async def test_an_idle_connection_is_closed_after_the_timeout() -> None:
    async with running_site(idle_timeout_s=0.3) as site, raw_client(site.port) as raw:
        for _ in range(3):  # requests keep it open past the timeout
            assert words_of(await raw.request(1, read_pdu(3, 40000, 2))) == SUNS
            await asyncio.sleep(0.15)
        assert await raw.closed_by_server(timeout_s=2.0)
        assert site.face.counters.idle_closed == 1
