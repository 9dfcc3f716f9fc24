"""The simulated SML meter's serial line: a pty the appliance opens by a fixed path.

A real optical head is a serial port such as /dev/ttyUSB0. The simulated site gives the
appliance the same thing: a pty, published as a symlink at the path the site file names for
the meter (relative to data_dir, e.g. ``sim/sml-meter``), so the appliance's configuration is
static and its driver opens a real tty with pyserial, 9600 8N1, exactly as on a site.

pyserial can open only the named (slave) end of a pty, and the simulator (`SmlMeterSimulator`)
opens its port by name too, so the line is two raw pty pairs joined back to back, the way a
null-modem cable joins two serial ports: the simulator writes on the slave of pair A, the
bytes are copied from master A to master B in the event loop, and the appliance reads the
slave of pair B, which the symlink names. Both slaves stay open here while the line exists,
so neither master sees a hang-up (EIO) while one end is closed. A telegram that the appliance's
end cannot take (nobody reading, buffer full) is dropped, as on a line nobody listens to; the
driver's port open flushes what waited in the buffer.

The symlink replaces a stale one left by a killed run, is never put over anything that is
not a symlink, and is removed by `close` when it still points at this line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from pathlib import Path

_LOG = logging.getLogger(__name__)

_CHUNK = 4096


class PtyLine:
    """Two pty pairs back to back; `meter_end` for the simulator, `link` for the appliance."""

    def __init__(self, link: Path, *, name: str = "sml-line") -> None:
        self.link = link
        self.name = name
        self.meter_end = ""  # the slave the simulator opens
        self.appliance_end = ""  # the slave the symlink names
        self.copied_bytes = 0
        self.dropped_bytes = 0
        self._fds: list[int] = []
        self._master_a = -1
        self._master_b = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        """Create the ptys, start copying and publish the symlink.

        Raises RuntimeError when the link path holds something that is not a symlink.
        """
        if self._fds:
            return
        if self.link.exists() and not self.link.is_symlink():
            raise RuntimeError(
                f"{self.name}: {self.link} exists and is not a symlink; "
                "the simulated site does not replace it"
            )
        master_a, slave_a = os.openpty()
        master_b, slave_b = os.openpty()
        self._fds = [master_a, slave_a, master_b, slave_b]
        for fd in self._fds:
            tty.setraw(fd)
        for fd in (master_a, master_b):
            os.set_blocking(fd, False)
        self._master_a, self._master_b = master_a, master_b
        self.meter_end = os.ttyname(slave_a)
        self.appliance_end = os.ttyname(slave_b)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(master_a, self._copy)
        try:
            _publish(self.link, self.appliance_end)
        except OSError:
            self._close_fds()
            raise
        _LOG.info("%s: %s -> %s", self.name, self.link, self.appliance_end)

    async def close(self) -> None:
        """Remove the symlink (if still ours), stop copying, close the ptys; idempotent."""
        with contextlib.suppress(OSError):
            if self.link.is_symlink() and os.readlink(self.link) == self.appliance_end:
                self.link.unlink()
        self._close_fds()

    def _close_fds(self) -> None:
        if self._loop is not None and self._master_a >= 0:
            self._loop.remove_reader(self._master_a)
        self._loop = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        self._master_a = self._master_b = -1

    def _copy(self) -> None:
        try:
            data = os.read(self._master_a, _CHUNK)
        except OSError:  # EAGAIN (nothing after all)
            return
        try:
            written = os.write(self._master_b, data)
        except OSError:  # EAGAIN: the appliance's end is full (nobody reads it)
            written = 0
        self.copied_bytes += written
        self.dropped_bytes += len(data) - written


def _publish(link: Path, target: str) -> None:
    """Point `link` at `target`, atomically replacing a stale symlink."""
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, link)
