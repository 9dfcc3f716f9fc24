"""The simulated site's ZigBee: a radio-less zigpy application fed with the plant's values.

A ZigBee clamp reaches a real appliance through a coordinator radio on a serial port; zigpy
in the appliance's process turns the radio's frames into attribute reports. The simulated
site has no radio and its plant lives in another process, so the work is split where the air
would be:

* the simulated-site process serves a **feed** (`ClampFeedServer`): one JSON line per clamp
  every `FEED_PERIOD_S` on a loopback TCP port named in the site file, holding what the
  clamp measures now (per-phase power, voltage, current, energy, frequency);
* the appliance's core builds, for ``radio: simulated``, a `SimulatedZigbeeRadio`: a
  `RadiolessApplication` (zigpy's own device table, ZCL parsing, deduplication, cluster
  dispatch) with a `Pc321Simulator` per configured clamp, paired as the real device is, that
  sends its Report_Attributes frames every `REPORT_PERIOD_S` with the latest fed values.

Everything from the ZCL frame onward is what runs on a site: zigpy decodes the frame, the
cluster emits its attribute events, the `Pc321Clamp` driver takes them through ``on_event``
and its poller writes the store. Only the radio is missing. A real PC321 reports every 12 to
20 s; the simulated one every `REPORT_PERIOD_S` (1 s), so that the site is complete within a
few seconds of start (the configured staleness, 30 s, is the real device's).

When the feed goes quiet (the simulated-site process stopped) the simulated device falls
silent too (`Pc321Faults.silent`), so the driver's staleness takes its points Bad, as when a
real clamp loses power; it reports again once values flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import zigpy.types as t

from appliance.drivers.zigbee_app import RadiolessApplication, stop_application
from appliance.simulation.devices.pc321_sim import ClampValues, Pc321Simulator

_LOG = logging.getLogger(__name__)

#: How often the simulated PC321 reports (a real one: every 12 to 20 s).
REPORT_PERIOD_S = 1.0
#: How often the simulated-site process sends each clamp's values.
FEED_PERIOD_S = 0.5
#: A connected feed without a line for this long is taken as gone.
FEED_SILENCE_S = 5.0
#: Longest line accepted (a line is about 300 bytes).
MAX_LINE_BYTES = 4096
#: Clients the feed serves at once (the appliance needs one).
MAX_FEED_CLIENTS = 4
#: How long `SimulatedZigbeeRadio.add_pc321` waits for the first values before pairing.
FIRST_VALUES_TIMEOUT_S = 2.0
_CONNECT_TIMEOUT_S = 2.0
_MIN_BACKOFF_S = 0.2
_MAX_BACKOFF_S = 2.0


def normal_ieee(ieee: str) -> str:
    """The IEEE address as zigpy prints it (lower case, colons): the feed's key."""
    return str(t.EUI64.convert(ieee))


# --------------------------------------------------------------------------- the line


def encode_line(ieee: str, values: ClampValues) -> bytes:
    """One feed line: the clamp's IEEE address and what it measures now."""
    record = {
        "ieee": normal_ieee(ieee),
        "active_power_w": list(values.active_power_w),
        "voltage_v": list(values.voltage_v),
        "current_a": list(values.current_a),
        "energy_kwh": values.energy_kwh,
        "frequency_hz": values.frequency_hz,
    }
    return json.dumps(record, allow_nan=False, separators=(",", ":")).encode() + b"\n"


class FeedLineError(ValueError):
    """A feed line that is not a clamp record."""


def _number(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FeedLineError(f"{key}: {value!r} is not a finite number")
    return float(value)


def _phases(record: Mapping[str, Any], key: str) -> tuple[float, float, float]:
    value = record.get(key)
    if not isinstance(value, list) or len(value) != 3:
        raise FeedLineError(f"{key}: {value!r} is not a list of three numbers")
    a, b, c = (_number({key: v}, key) for v in value)
    return (a, b, c)


def decode_line(line: bytes) -> tuple[str, ClampValues]:
    """(IEEE address, values) from one feed line; FeedLineError if it is not one."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedLineError(f"not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise FeedLineError(f"not a JSON object: {type(record).__name__}")
    ieee = record.get("ieee")
    try:
        key = normal_ieee(ieee) if isinstance(ieee, str) else None
    except (ValueError, TypeError):
        key = None
    if key is None:
        raise FeedLineError(f"ieee: {ieee!r} is not an IEEE address")
    values = ClampValues(
        active_power_w=_phases(record, "active_power_w"),
        voltage_v=_phases(record, "voltage_v"),
        current_a=_phases(record, "current_a"),
        energy_kwh=_number(record, "energy_kwh"),
        frequency_hz=_number(record, "frequency_hz"),
    )
    return key, values


# --------------------------------------------------------------------------- server


class ClampFeedServer:
    """The simulated-site side: pushes every clamp's values to whoever connects.

    ``sources`` maps an IEEE address to the function giving that clamp's values now. Serves
    at most `MAX_FEED_CLIENTS` connections; one more is closed at once.
    """

    def __init__(
        self,
        sources: Mapping[str, Callable[[], ClampValues]],
        *,
        period_s: float = FEED_PERIOD_S,
        name: str = "sim.zigbee-feed",
    ) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self._sources = {normal_ieee(ieee): source for ieee, source in sources.items()}
        self._period_s = period_s
        self._name = name
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._stopping = asyncio.Event()
        self.lines_sent = 0
        self.refused = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); returns the port."""
        self._stopping.clear()
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = int(self._server.sockets[0].getsockname()[1])
        _LOG.info(
            "%s: clamp values every %g s on %s:%d for %s",
            self._name,
            self._period_s,
            host,
            bound,
            ", ".join(self._sources),
        )
        return bound

    async def stop(self) -> None:
        """Stop listening and end every client's connection; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # No cancel(): on Python 3.11 asyncio's start_server callback calls exception() on a
        # cancelled handler task and logs the CancelledError. The event wakes a sleeping
        # handler, the abort one blocked in drain().
        self._stopping.set()
        clients = dict(self._clients)
        for writer in clients.values():
            writer.transport.abort()
        if clients:
            await asyncio.wait(clients)
        if server is not None:
            await server.wait_closed()

    def lines(self) -> bytes:
        """One line per clamp whose source answers."""
        out = []
        for ieee, source in self._sources.items():
            try:
                out.append(encode_line(ieee, source()))
            except Exception as exc:  # noqa: BLE001 - a broken source: that clamp sends nothing
                _LOG.warning("%s: no values for %s: %r", self._name, ieee, exc)
        return b"".join(out)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or self._server is None or len(self._clients) >= MAX_FEED_CLIENTS:
            self.refused += 1
            writer.close()
            return
        self._clients[task] = writer
        try:
            while not self._stopping.is_set():
                data = self.lines()
                writer.write(data)
                await writer.drain()
                self.lines_sent += data.count(b"\n")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._period_s):
                        await self._stopping.wait()
        except (ConnectionError, OSError):
            pass  # the appliance went away; it reconnects if it comes back
        finally:
            del self._clients[task]
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


# --------------------------------------------------------------------------- the radio


@dataclass(slots=True)
class _Fed:
    values: ClampValues
    at: float  # loop time of arrival


class SimulatedZigbeeRadio:
    """The appliance side: a radio-less zigpy application whose PC321s report fed values.

    `start` builds the application and starts reading the feed at host:port (reconnecting
    with jittered back-off, so the feed may come up later). `add_pc321` pairs a simulated
    PC321 on it, which reports every `REPORT_PERIOD_S`; `app` is what the `Pc321Clamp`
    driver listens on. `stop` undoes all of it.
    """

    def __init__(self, app: RadiolessApplication, host: str, port: int, *, name: str) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._name = name
        self._latest: dict[str, _Fed] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self._simulators: dict[str, Pc321Simulator] = {}
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()  # back-off jitter, not cryptography
        self._connected = False
        self._down_logged = False
        self.lines_received = 0
        self.rejected_lines = 0

    @classmethod
    async def start(
        cls, host: str, port: int, *, name: str = "zigbee[simulated]"
    ) -> SimulatedZigbeeRadio:
        app = await RadiolessApplication.start()
        radio = cls(app, host, port, name=name)
        radio._task = asyncio.create_task(radio._read_feed(), name=f"{name}.feed")
        _LOG.info("%s: radio-less zigpy application; reports fed from %s:%d", name, host, port)
        return radio

    @property
    def app(self) -> RadiolessApplication:
        return self._app

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def simulators(self) -> Mapping[str, Pc321Simulator]:
        """The paired simulated devices by IEEE address."""
        return self._simulators

    async def add_pc321(
        self, ieee: str, *, name: str, first_values_timeout_s: float = FIRST_VALUES_TIMEOUT_S
    ) -> Pc321Simulator:
        """Pair a simulated PC321 at `ieee` and start its reports.

        Waits up to `first_values_timeout_s` for its first values, so that its first report
        carries them; without values it stays silent until they come.
        """
        key = normal_ieee(ieee)
        if key in self._simulators:
            return self._simulators[key]
        arrived = self._arrived.setdefault(key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(first_values_timeout_s):
                await arrived.wait()
        simulator = Pc321Simulator(
            self._app, self._source(key), key, REPORT_PERIOD_S, name=f"sim.{name}"
        )
        simulator.faults.silent = not self._fresh(key)
        self._simulators[key] = simulator
        await simulator.start()
        return simulator

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for simulator in self._simulators.values():
            await simulator.stop()
        self._simulators.clear()
        await stop_application(self._app)

    # ------------------------------------------------------------------ values

    def _fresh(self, key: str, within_s: float = FEED_SILENCE_S) -> bool:
        fed = self._latest.get(key)
        loop = asyncio.get_running_loop()
        return fed is not None and loop.time() - fed.at <= within_s

    def _source(self, key: str) -> Callable[[], ClampValues]:
        def source() -> ClampValues:
            # A backstop: the device is silenced before its values get this old.
            fed = self._latest.get(key)
            if fed is None or not self._fresh(key, 2 * FEED_SILENCE_S):
                raise LookupError(f"no fresh values for {key} from {self._host}:{self._port}")
            return fed.values

        return source

    def _silence(self, silent: bool) -> None:
        for key, simulator in self._simulators.items():
            simulator.faults.silent = silent or not self._fresh(key)

    def _on_line(self, line: bytes) -> None:
        try:
            key, values = decode_line(line)
        except FeedLineError as exc:
            self.rejected_lines += 1
            log = _LOG.warning if self.rejected_lines == 1 else _LOG.debug
            log("%s: feed line rejected: %s", self._name, exc)
            return
        self.lines_received += 1
        self._latest[key] = _Fed(values, asyncio.get_running_loop().time())
        self._arrived.setdefault(key, asyncio.Event()).set()
        simulator = self._simulators.get(key)
        if simulator is not None:
            simulator.faults.silent = False

    # ------------------------------------------------------------------ the feed

    def _backoff_s(self, failures: int) -> float:
        delay = min(_MAX_BACKOFF_S, _MIN_BACKOFF_S * 2.0 ** min(failures, 8))
        return delay * self._rng.uniform(0.5, 1.0)

    def _went_down(self, why: str) -> None:
        self._connected = False
        self._silence(True)
        if not self._down_logged:
            _LOG.warning("%s: feed %s:%d %s", self._name, self._host, self._port, why)
            self._down_logged = True

    async def _read_feed(self) -> None:
        failures = 0
        while True:
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(
                        self._host, self._port, limit=MAX_LINE_BYTES
                    )
            except (OSError, TimeoutError) as exc:
                self._went_down(f"not reachable ({exc!r}); retrying")
                failures += 1
                await asyncio.sleep(self._backoff_s(failures))
                continue
            failures = 0
            self._connected = True
            if self._down_logged:
                _LOG.info("%s: feed %s:%d back", self._name, self._host, self._port)
            self._down_logged = False
            why = "closed"
            try:
                while True:
                    async with asyncio.timeout(FEED_SILENCE_S):
                        line = await reader.readline()
                    if not line:
                        break
                    self._on_line(line)
            except TimeoutError:
                why = f"silent for {FEED_SILENCE_S:g} s"
            except (OSError, ValueError) as exc:  # ValueError: a line over MAX_LINE_BYTES
                why = f"failed: {exc!r}"
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            self._went_down(f"{why}; reconnecting")
            failures += 1
            await asyncio.sleep(self._backoff_s(failures))
