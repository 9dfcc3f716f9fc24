"""The zigpy ControllerApplication: one per coordinator radio, shared by every ZigBee driver.

Two ways to get one:

* `start_radio_application` for a real coordinator. The radio library is chosen by the
  ``radio`` key of the site's ZigbeeConnection and imported only then, because none of them
  is a dependency of the appliance: a site that names a radio whose package is missing gets
  a `NotSupported` naming the package to install, not an ImportError at start-up.
* `RadiolessApplication` for the simulator and the tests: zigpy's own test pattern (its
  ``tests/conftest.py`` App), every radio method a no-op, so that simulated devices live in a
  real zigpy device table and their frames go through zigpy's real ZCL parsing and dispatch.

Stop either with `stop_application`, which awaits zigpy's shutdown (it cancels zigpy's
background tasks and closes the device database).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import zigpy.application
import zigpy.config as zconf
import zigpy.endpoint
import zigpy.exceptions
import zigpy.state
import zigpy.types as t
import zigpy.zdo.types as zdo_t

from appliance.errors import ConfigError, DeviceUnavailable, NotSupported

_LOG = logging.getLogger(__name__)

ControllerApplication = zigpy.application.ControllerApplication

_I = TypeVar("_I", bound=int)


def zigpy_int(cls: type[_I], value: int) -> _I:
    """``cls(value)`` for zigpy's fixed-width ints (t.NWK, t.uint8_t, ...).

    Their constructors are untyped in zigpy 2.4.0; calling them through ``type[int]`` keeps
    mypy's strict mode without an ignore at every call site.
    """
    return cls(value)


@dataclass(frozen=True, slots=True)
class RadioPackage:
    """Where a radio library keeps its ControllerApplication, and what pip calls it."""

    module: str  # import name of the package
    distribution: str  # name on PyPI

    @property
    def application_module(self) -> str:
        # Every zigpy radio library uses this layout (bellows, zigpy-znp, zigpy-deconz, ...).
        return f"{self.module}.zigbee.application"


#: ZigbeeConnection.radio -> radio library. None of them is installed with the appliance.
RADIO_PACKAGES: Mapping[str, RadioPackage] = {
    "znp": RadioPackage("zigpy_znp", "zigpy-znp"),  # TI CC2652 / CC1352 (Z-Stack)
    "ezsp": RadioPackage("bellows", "bellows"),  # Silicon Labs EmberZNet
    "deconz": RadioPackage("zigpy_deconz", "zigpy-deconz"),  # ConBee / RaspBee
    "zigate": RadioPackage("zigpy_zigate", "zigpy-zigate"),
    "xbee": RadioPackage("zigpy_xbee", "zigpy-xbee"),
}


def radio_application_class(radio: str) -> type[ControllerApplication]:
    """The radio library's ControllerApplication class, imported now.

    Raises ConfigError for an unknown radio name and NotSupported (permanent) when the radio
    library, or one of its own dependencies, is not installed.
    """
    package = RADIO_PACKAGES.get(radio)
    if package is None:
        raise ConfigError(
            f"zigbee radio {radio!r} is not known; allowed: {', '.join(sorted(RADIO_PACKAGES))}"
        )
    try:
        module = importlib.import_module(package.application_module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing == package.module:
            raise NotSupported(
                f"zigbee radio {radio!r} needs the Python package '{package.distribution}', "
                f"which is not installed; install it into the appliance's environment "
                f"(pip install {package.distribution}) or choose another radio"
            ) from exc
        raise NotSupported(
            f"zigbee radio {radio!r}: package '{package.distribution}' cannot be imported "
            f"because its dependency {exc.name!r} is missing ({exc})"
        ) from exc
    cls = getattr(module, "ControllerApplication", None)
    if not isinstance(cls, type) or not issubclass(cls, ControllerApplication):
        raise NotSupported(
            f"zigbee radio {radio!r}: {package.application_module} has no zigpy "
            f"ControllerApplication (installed '{package.distribution}' does not fit zigpy "
            f"{_zigpy_version()})"
        )
    return cls


def radio_config(
    device_path: str, *, baudrate: int = 115200, database_path: Path | None = None
) -> dict[str, Any]:
    """zigpy configuration for a radio on a serial port.

    OTA is off: the appliance never fetches device firmware from the Internet. The device
    database (SQLite) keeps paired devices across restarts; without it zigpy forgets the clamp.
    """
    return {
        zconf.CONF_DATABASE: None if database_path is None else str(database_path),
        zconf.CONF_DEVICE: {
            zconf.CONF_DEVICE_PATH: device_path,
            zconf.CONF_DEVICE_BAUDRATE: baudrate,
        },
        zconf.CONF_OTA: {zconf.CONF_OTA_ENABLED: False},
    }


async def start_radio_application(
    radio: str,
    device_path: str,
    *,
    baudrate: int = 115200,
    database_path: Path | None = None,
    auto_form: bool = True,
) -> ControllerApplication:
    """Import the radio library, open the radio and start the network.

    ``auto_form`` forms a new network only when the radio has none (as ZHA does); a formed
    network is never touched. Raises ConfigError / NotSupported (see
    `radio_application_class`) or DeviceUnavailable when the radio cannot be started.
    """
    cls = radio_application_class(radio)
    config = radio_config(device_path, baudrate=baudrate, database_path=database_path)
    try:
        # start_radio=False, then startup(): `new` would lose the app (and leave its database
        # open) when the radio fails to start.
        app = await cls.new(config, auto_form=auto_form, start_radio=False)
    except Exception as exc:  # voluptuous / sqlite errors of any kind
        raise DeviceUnavailable(f"zigbee radio {radio} on {device_path}: {exc!r}") from exc
    try:
        await app.startup(auto_form=auto_form)
    except Exception as exc:  # radio libraries raise their own exception types
        await stop_application(app)
        raise DeviceUnavailable(
            f"zigbee radio {radio} on {device_path} did not start: {exc!r}"
        ) from exc
    _LOG.info(
        "zigbee radio %s on %s started, %d known devices", radio, device_path, len(app.devices)
    )
    return app


async def stop_application(app: ControllerApplication) -> None:
    """Shut zigpy down and let the tasks it cancelled finish."""
    await app.shutdown()
    # zigpy's shutdown cancels its tasks without awaiting them; one turn of the loop lets
    # them run their cancellation so none outlives the application.
    await asyncio.sleep(0)


def _zigpy_version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415  # only for the message

        return version("zigpy")
    except Exception:  # noqa: BLE001
        return "?"


# --------------------------------------------------------------------------- radio-less

#: Responder for the frames the application sends to one simulated device (by NWK address).
PacketResponder = Callable[[t.ZigbeePacket], None]

RADIOLESS_COORDINATOR_IEEE = "aa:11:22:bb:33:44:be:ef"


def radioless_config(database_path: Path | None = None) -> dict[str, Any]:
    """Configuration without radio, OTA, watchdog, backups or topology scans.

    Passed to the constructor as a plain dict: running it through ``SCHEMA`` first fails in
    zigpy 2.4.0 (the OTA provider objects would be validated twice).
    """
    return {
        zconf.CONF_DATABASE: None if database_path is None else str(database_path),
        zconf.CONF_DEVICE: {zconf.CONF_DEVICE_PATH: "/dev/null"},
        zconf.CONF_OTA: {zconf.CONF_OTA_ENABLED: False},
        zconf.CONF_WATCHDOG_ENABLED: False,
        zconf.CONF_NWK_BACKUP_ENABLED: False,
        zconf.CONF_TOPO_SCAN_ENABLED: False,
    }


class RadiolessApplication(ControllerApplication):
    """A zigpy application whose "radio" is this process.

    Frames the application sends are recorded in `sent_packets` and handed, one loop turn
    later (as if they had crossed the air), to the responder registered for the destination
    NWK address; a unicast to an address without a responder fails with DeliveryError, like a
    device that is not on the network. Frames from simulated devices enter with zigpy's own
    `packet_received`, the same call a radio library makes.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.sent_packets: list[t.ZigbeePacket] = []
        self._responders: dict[int, PacketResponder] = {}

    @classmethod
    async def start(
        cls,
        *,
        coordinator_ieee: str = RADIOLESS_COORDINATOR_IEEE,
        database_path: Path | None = None,
    ) -> RadiolessApplication:
        """Build and start one (stop it with `stop_application`)."""
        app = cls(radioless_config(database_path))
        app.state.node_info = zigpy.state.NodeInfo(
            nwk=zigpy_int(t.NWK, 0x0000),
            ieee=t.EUI64.convert(coordinator_ieee),
            logical_type=zdo_t.LogicalType.Coordinator,
        )
        await app.startup(auto_form=False)
        return app

    def register_responder(self, nwk: int, responder: PacketResponder) -> Callable[[], None]:
        """Route frames sent to ``nwk`` to ``responder``; returns the function that undoes it."""
        self._responders[int(nwk)] = responder

        def unregister() -> None:
            if self._responders.get(int(nwk)) is responder:
                del self._responders[int(nwk)]

        return unregister

    # ------------------------------------------------------------------ the radio API

    async def send_packet(self, packet: t.ZigbeePacket) -> None:
        self.sent_packets.append(packet)
        dst = packet.dst
        if dst is None or dst.addr_mode != t.AddrMode.NWK or dst.address is None:
            return  # broadcasts and group casts: nobody simulated listens
        responder = self._responders.get(int(cast(t.NWK, dst.address)))
        if responder is None:
            raise zigpy.exceptions.DeliveryError(f"no simulated device at NWK 0x{dst.address:04X}")
        asyncio.get_running_loop().call_soon(responder, packet)

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def start_network(self) -> None:
        # startup() needs the coordinator in the device table (KeyError otherwise).
        node = self.state.node_info
        dev = self.add_device(nwk=node.nwk, ieee=node.ieee)
        dev.node_desc = zdo_t.NodeDescriptor(  # type: ignore[no-untyped-call]
            logical_type=zdo_t.LogicalType.Coordinator
        )
        ep = dev.add_endpoint(1)
        ep.status = zigpy.endpoint.Status.ZDO_INIT
        ep.profile_id = 260

    async def force_remove(self, dev: Any) -> None:
        pass

    async def add_endpoint(self, descriptor: Any) -> None:
        pass

    async def permit_ncp(self, time_s: int = 60) -> None:
        pass

    async def permit_with_link_key(self, node: Any, link_key: Any, time_s: int = 60) -> None:
        pass

    async def reset_network_info(self) -> None:
        pass

    async def write_network_info(self, *, network_info: Any, node_info: Any) -> None:
        pass

    async def load_network_info(self, *, load_devices: bool = False) -> None:
        self.state.network_info.channel = zigpy_int(t.uint8_t, 15)


@asynccontextmanager
async def radioless_application(
    *, database_path: Path | None = None
) -> AsyncIterator[RadiolessApplication]:
    """`RadiolessApplication.start` ... `stop_application`, as a context manager."""
    app = await RadiolessApplication.start(database_path=database_path)
    try:
        yield app
    finally:
        await stop_application(app)
