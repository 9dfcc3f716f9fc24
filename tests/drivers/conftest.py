"""Fixtures the driver tests share: serial lines, TCP ports, raw clients and driver clean-up.

Serial links run through two raw pty pairs joined back to back (a null-modem cable), since
pyserial can only open the named (slave) end of a pty; `socat_link` gives named device links
instead, as an RS485 adapter appears, for tests that need the line to disappear and come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
from pymodbus.client import AsyncModbusTcpClient

from appliance.drivers.pylontech_can import PylontechCanBms

LOCALHOST = "127.0.0.1"


class _Closeable(Protocol):
    async def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closeable)


class Closing:
    """Registers drivers (anything with ``async close()``); the fixture closes them afterwards."""

    def __init__(self) -> None:
        self.made: list[_Closeable] = []

    def __call__(self, driver: _C) -> _C:
        self.made.append(driver)
        return driver


@pytest.fixture
async def closing() -> AsyncIterator[Closing]:
    """``closing(driver)`` returns ``driver`` and closes it after the test."""
    registry = Closing()
    yield registry
    for driver in registry.made:
        await driver.close()


@pytest.fixture
async def drivers() -> AsyncIterator[list[PylontechCanBms]]:
    """CAN drivers a test creates; all closed afterwards."""
    made: list[PylontechCanBms] = []
    yield made
    for driver in made:
        await driver.close()
    # No python-can Notifier thread outlives its driver.
    assert [t.name for t in threading.enumerate() if t.name.startswith("Notifier")] == []


@pytest.fixture
async def raw_client(tcp_port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    """A plain pymodbus client on the module's ``tcp_port`` fixture (a simulator's port)."""
    client = AsyncModbusTcpClient(LOCALHOST, port=tcp_port, timeout=1, retries=0)
    assert await client.connect()
    yield client
    client.close()


@pytest.fixture
async def serial_pair() -> AsyncIterator[tuple[str, str]]:
    """Two pty slave names joined back to back: bytes written to one are read on the other."""
    loop = asyncio.get_running_loop()
    master_a, slave_a = os.openpty()
    master_b, slave_b = os.openpty()
    for fd in (master_a, slave_a, master_b, slave_b):
        tty.setraw(fd)
    for fd in (master_a, master_b):
        os.set_blocking(fd, False)

    def pump(src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except OSError:  # EAGAIN, or EIO while no one has the slave open
            return
        with contextlib.suppress(OSError):  # far end full: lost, as on a line nobody reads
            os.write(dst, data)

    loop.add_reader(master_a, pump, master_a, master_b)
    loop.add_reader(master_b, pump, master_b, master_a)
    try:
        # The slave fds stay open here so the masters never see EIO between openings.
        yield os.ttyname(slave_a), os.ttyname(slave_b)
    finally:
        loop.remove_reader(master_a)
        loop.remove_reader(master_b)
        for fd in (master_a, slave_a, master_b, slave_b):
            os.close(fd)


def _all_exist(*paths: Path) -> bool:
    return all(path.exists() for path in paths)


@contextlib.asynccontextmanager
async def _socat_link(device_end: Path, appliance_end: Path) -> AsyncIterator[None]:
    socat = shutil.which("socat")
    assert socat is not None, (
        "socat is missing: `make test` installs it (scripts/install-test-servers.sh)"
    )
    process = await asyncio.create_subprocess_exec(
        socat,
        f"pty,raw,echo=0,link={device_end}",
        f"pty,raw,echo=0,link={appliance_end}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if _all_exist(device_end, appliance_end):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("socat did not create the pty links")
        yield
    finally:
        process.terminate()
        async with asyncio.timeout(5):
            await process.wait()


@pytest.fixture
def socat_link() -> Callable[[Path, Path], AbstractAsyncContextManager[None]]:
    """``async with socat_link(device_end, appliance_end)``: a pty pair at those two paths.

    socat (a Debian package `make test` installs) joins two ptys like a null-modem cable and
    gives each end a stable path, the way a site config names `/dev/ttyUSB0`; the paths go
    away when the block ends, as when the adapter is unplugged.
    """
    return _socat_link


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(1024):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, LOCALHOST, 0)
    yield int(server.sockets[0].getsockname()[1])
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 nobody listens on (bound, not listening, for the test's duration)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        yield int(sock.getsockname()[1])
