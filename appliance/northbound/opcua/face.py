"""The OPC UA face: an asyncua server that publishes the site's points and takes commands.

    face = OpcUaFace(context)
    await face.start()      # binds faces.opcua.bind:port; raises if it cannot
    face.apply(changes)     # once per core cycle, on the faces' event loop
    await face.stop()

What the face sets up, and why (facts and traps: shared/reference/opcua.md):
* the information model of `model.py`, loaded in one batch, every point Bad_WaitingForInitialData
  (or its mirror sample) before the port opens;
* users, roles and the trust list of `security.py` in place of asyncua's permissive defaults;
* the Write service and the methods of `commands.py`, which answer per item;
* limits on sessions, subscriptions and publishing intervals (asyncua has no floor);
* BuildInfo, ServerProfileArray and a ServiceLevel that falls when the data the control
  relies on (grid meter, BMS, inverters) is stale or lost.
* HistoryRead (raw) of the archived points from the local archive, when the site keeps one
  (`history.py`);
* alarm events (OffNormalAlarmType from the Server object, ConditionRefresh) besides the
  TwoStateDiscrete variables of the Alarms block (`alarms.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server

import appliance
from appliance.northbound.face import FaceContext
from appliance.northbound.opcua.alarms import AlarmEmitter, alarm_specs
from appliance.northbound.opcua.aspace import load_model
from appliance.northbound.opcua.commands import CommandService, GuardedAttributeService
from appliance.northbound.opcua.history import ArchiveHistory, install_history
from appliance.northbound.opcua.model import InformationModel, build_model
from appliance.northbound.opcua.publisher import Publisher, share_scalar_values
from appliance.northbound.opcua.quality import Binding, key_point_ids, service_level
from appliance.northbound.opcua.security import (
    PkiPaths,
    RoleRuleset,
    TrustList,
    UserDirectory,
    ensure_server_certificate,
    server_hosts,
)
from appliance.northbound.opcua.uatypes import AttributeIds, ObjectIds, data_value, node_id
from appliance.store import Sample
from appliance.store.sample import WAITING_SAMPLE

log = logging.getLogger(__name__)

PRODUCT_URI = "urn:appliance:pvbess"
MANUFACTURER = "appliance"
PRODUCT_NAME = "PV + battery site appliance"

#: What the face claims (self-tested, not CTT-certified; gaps in docs/opcua.md).
SERVER_PROFILES = (
    "http://opcfoundation.org/UA-Profile/Server/MicroEmbeddedDevice2017",
    "http://opcfoundation.org/UA-Profile/Server/DataAccess",
    "http://opcfoundation.org/UA-Profile/Server/Methods",
)

# Limits. There are no configuration keys for them (yet); the values suit a handful of
# SCADA / HMI clients, the load the faces process is sized for.
MAX_CONNECTIONS = 32  # TCP connections, including those not yet activated
MIN_PUBLISHING_INTERVAL_MS = 100.0  # asyncua accepts any interval, even 0
# An abandoned session (and its subscriptions) holds one of `max_sessions` this long: a
# client that drops a few sessions must not lock every other client out for minutes.
MAX_SESSION_TIMEOUT_MS = 60_000.0
PENDING_ACTIVATION_S = 10  # a connection that never activates a session is closed then
MAX_MONITORED_ITEM_QUEUE = 1000

_WILDCARD = ("0.0.0.0", "::")  # noqa: S104 - names of the wildcard binds, not a bind


class OpcUaFace:
    name = "opcua"

    def __init__(
        self, context: FaceContext, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self._context = context
        self._settings = context.config.faces.opcua
        self._clock = clock or (lambda: datetime.now(UTC))
        self.model: InformationModel = build_model(context.table, self._settings.namespace_uri)
        self.pki = PkiPaths(Path(context.config.data_dir) / "opcua")
        self.application_uri = f"urn:appliance:{context.config.site.id}:opcua"
        self.server: Server | None = None
        self.users: UserDirectory | None = None
        self.trust_list: TrustList | None = None
        self.commands: CommandService | None = None
        self.namespace_index = 0
        self._publisher: Publisher | None = None
        self.alarms: AlarmEmitter | None = None
        self.history: ArchiveHistory | None = None
        self._key_points = key_point_ids(context.table.ids())
        self._bindings: dict[str, Binding] = {}
        self._service_level = -1

    @property
    def endpoint(self) -> str:
        bind = self._settings.bind
        host = socket.gethostname() if bind in _WILDCARD else bind
        if ":" in host:
            host = f"[{host}]"
        return f"opc.tcp://{host}:{self._settings.port}/"

    async def start(self) -> None:
        _quiet_asyncua_loggers()
        share_scalar_values()
        settings = self._settings
        self.users = UserDirectory(self._context.config.users, settings.allow_anonymous)
        server = Server(user_manager=self.users)
        server.allow_remote_admin(False)
        # ConditionRefresh / ConditionRefresh2 replay the active alarms; asyncua binds
        # them only when this is set before init().
        server.iserver.bind_condition_methods = True
        await server.init()
        self.server = server
        try:
            await self._configure(server)
            self.namespace_index = await server.register_namespace(settings.namespace_uri)
            load_model(server.iserver, self.model, self.namespace_index)
            self._install_commands(server)
            await self._describe_server(server)
            await self._publish_initial(server)
            await self._install_events_and_history(server)
            await server.start()
        except BaseException:
            if self._publisher is not None:
                await self._publisher.stop()
            if self.alarms is not None:
                await self.alarms.stop()
            self.server = None
            raise
        log.info(
            "opcua: serving %s (%d points; policies %s; anonymous %s; %d users)",
            self.endpoint,
            len(self._context.table),
            ", ".join(settings.security_policies),
            "read-only" if settings.allow_anonymous else "off",
            len(self._context.config.users),
        )

    def apply(self, changes: Mapping[str, Sample]) -> None:
        if self._publisher is not None:
            self._publisher.submit(changes)
        if self.alarms is not None:
            self.alarms.submit(changes)

    async def drain(self) -> None:
        """Wait until every change applied so far is published (tests, benchmarks)."""
        if self._publisher is not None:
            await self._publisher.drain()
        if self.alarms is not None:
            await self.alarms.drain()

    async def stop(self) -> None:
        if self._publisher is not None:
            await self._publisher.stop()
        if self.alarms is not None:
            await self.alarms.stop()
        if self.server is not None:
            # asyncua's ServerStatus clock sleeps a second between ticks and its stop()
            # waits for the tick to end; cancelling it makes stopping immediate.
            clock = self.server.iserver.time_task
            if clock is not None:
                clock.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await clock
                self.server.iserver.time_task = None
            await self.server.stop()
            self.server = None
        log.info("opcua: stopped")

    # ----------------------------------------------------------------------- set-up

    async def _configure(self, server: Server) -> None:
        settings = self._settings
        config = self._context.config
        bind, port = settings.bind, settings.port
        server.set_endpoint(self.endpoint)
        server.socket_address = (bind, port)
        server.set_server_name(f"{PRODUCT_NAME} ({config.site.name})")
        server.product_uri = PRODUCT_URI
        server.manufacturer_name = MANUFACTURER
        server.application_type = ua.ApplicationType.Server
        await server.set_application_uri(self.application_uri)
        server.set_security_policy(
            [ua.SecurityPolicyType[name] for name in settings.security_policies],
            permission_ruleset=RoleRuleset(),
        )
        tokens: list[type] = [ua.UserNameIdentityToken] if config.users else []
        if settings.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        await self._load_certificate(server)
        self.trust_list = TrustList(self.pki)
        server.set_certificate_validator(self.trust_list)
        iserver = server.iserver
        iserver.max_subscriptions = settings.max_subscriptions
        iserver.max_connections = MAX_CONNECTIONS
        iserver.max_session_timeout_ms = MAX_SESSION_TIMEOUT_MS
        iserver.max_pending_activation_seconds = PENDING_ACTIVATION_S
        iserver.max_monitored_item_queue_size = MAX_MONITORED_ITEM_QUEUE
        # A class attribute in asyncua: it limits every server of the process, and the
        # faces process runs exactly one.
        InternalSession.max_connections = settings.max_sessions
        _clamp_publishing_interval(iserver.subscription_service)
        _forget_subscription_loggers(iserver.subscription_service)
        if "NoSecurity" in settings.security_policies:
            # A password is encrypted with the server certificate's key only when a secure
            # policy is offered; with NoSecurity alone, clients send it in plain text.
            secure = [p for p in settings.security_policies if p != "NoSecurity"]
            log.warning(
                "opcua: the NoSecurity endpoint is enabled: values and commands travel "
                "unsigned and unencrypted (%s)",
                "passwords are still encrypted"
                if secure
                else "no secure policy is offered: passwords travel in plain text too",
            )

    async def _load_certificate(self, server: Server) -> None:
        settings = self._settings
        await asyncio.to_thread(self.pki.create)  # trusted/ and rejected/ are always needed
        if settings.certificate_file is not None and settings.private_key_file is not None:
            await server.load_certificate(str(settings.certificate_file))
            await server.load_private_key(str(settings.private_key_file))
            return
        await asyncio.to_thread(
            ensure_server_certificate,
            self.pki,
            self.application_uri,
            server_hosts(settings.bind),
            f"appliance {self._context.config.site.id}",
        )
        await server.load_certificate(str(self.pki.certificate))
        await server.load_private_key(str(self.pki.private_key))

    def _install_commands(self, server: Server) -> None:
        iserver = server.iserver
        self.commands = CommandService(
            self._context.table,
            self.model,
            self.namespace_index,
            self._context.submit,
            self._context.mirror,
            self._context.config.control.heartbeat_timeout_s,
        )
        iserver.attribute_service = GuardedAttributeService(iserver.aspace, self.commands)
        for method in self.model.methods:
            iserver.isession.add_method_callback(
                node_id(method.node_id, self.namespace_index),
                self.commands.method_callback(method),
            )

    async def _describe_server(self, server: Server) -> None:
        await server.set_build_info(
            PRODUCT_URI,
            MANUFACTURER,
            PRODUCT_NAME,
            appliance.__version__,
            appliance.__version__,
            _build_date(),
        )
        capabilities = {
            ObjectIds.Server_ServerCapabilities_ServerProfileArray: ua.Variant(
                list(SERVER_PROFILES), ua.VariantType.String
            ),
            ObjectIds.Server_ServerCapabilities_MaxSessions: ua.Variant(
                self._settings.max_sessions, ua.VariantType.UInt32
            ),
            ObjectIds.Server_ServerCapabilities_MaxSubscriptions: ua.Variant(
                self._settings.max_subscriptions, ua.VariantType.UInt32
            ),
        }
        for identifier, variant in capabilities.items():
            await server.get_node(node_id(identifier)).write_value(variant)

    async def _publish_initial(self, server: Server) -> None:
        index = self.namespace_index
        bindings: dict[str, Binding] = {}
        for node in self.model.point_variables():
            if node.point_id is None or node.variant_type is None:
                continue  # not a point variable (point_variables() yields only those)
            text = self.model.value_as_text.get(node.point_id)
            bindings[node.point_id] = Binding(
                self._context.table[node.point_id],
                node_id(node.node_id, index),
                node.variant_type,
                node_id(text, index) if text is not None else None,
            )
        self._bindings = bindings
        self._publisher = Publisher(
            server.iserver.aspace, bindings, self._clock, self._update_service_level
        )
        mirror = self._context.mirror
        self._publisher.submit({pid: mirror.get(pid, WAITING_SAMPLE) for pid in bindings})
        await self._publisher.drain()
        await self._update_service_level(frozenset(self._key_points))

    async def _install_events_and_history(self, server: Server) -> None:
        iserver = server.iserver
        self.alarms = AlarmEmitter(
            iserver, alarm_specs(self._context.table), self.namespace_index, self._clock
        )
        await self.alarms.init()
        # Alarms already active at start become retained conditions for ConditionRefresh.
        mirror = self._context.mirror
        self.alarms.submit({pid: mirror[pid] for pid in self.alarms.tracker.specs if pid in mirror})
        await self.alarms.drain()
        self.history = await install_history(
            iserver,
            {pid: (b.point, b.node_id, b.variant_type) for pid, b in self._bindings.items()},
            self._context.history,
        )

    async def _update_service_level(self, changed: frozenset[str]) -> None:
        if self.server is None or not changed.intersection(self._key_points):
            return
        mirror = self._context.mirror
        level = service_level(
            {pid: mirror.get(pid, WAITING_SAMPLE).quality for pid in self._key_points}
        )
        if level != self._service_level:
            self._service_level = level
            await self.server.iserver.aspace.write_attribute_value(
                node_id(ObjectIds.Server_ServiceLevel),
                AttributeIds.Value,
                data_value(ua.Variant(level, ua.VariantType.Byte), server=self._clock()),
            )
            log.info("opcua: ServiceLevel %d", level)


def _clamp_publishing_interval(service: Any) -> None:
    """Raise client-requested publishing intervals to MIN_PUBLISHING_INTERVAL_MS."""
    create = service.create_subscription

    async def create_subscription(
        params: ua.CreateSubscriptionParameters, *args: Any, **kwargs: Any
    ) -> ua.CreateSubscriptionResult:
        params.RequestedPublishingInterval = max(
            params.RequestedPublishingInterval, MIN_PUBLISHING_INTERVAL_MS
        )
        result: ua.CreateSubscriptionResult = await create(params, *args, **kwargs)
        return result

    # The instance attribute shadows the method; sessions call through the instance.
    # (ModifySubscription needs nothing: asyncua ignores the requested values there.)
    setattr(service, "create_subscription", create_subscription)  # noqa: B010


def _forget_subscription_loggers(service: Any) -> None:
    """Drop the logger asyncua makes for each subscription once the subscription is gone.

    asyncua 2.1 calls getLogger(f"...monitored_item_service.{SubscriptionId}") per
    subscription and the logging module keeps every logger for good: about 0.7 KiB for
    each subscription ever created, which a server running for years cannot afford.
    """
    delete = service.delete_subscriptions
    prefix = "asyncua.server.monitored_item_service."

    async def delete_subscriptions(ids: list[int]) -> list[ua.StatusCode]:
        result: list[ua.StatusCode] = await delete(ids)
        with logging._lock:  # type: ignore[attr-defined]  # the logging module's own lock
            for subscription_id in ids:
                logging.Logger.manager.loggerDict.pop(f"{prefix}{subscription_id}", None)
        return result

    setattr(service, "delete_subscriptions", delete_subscriptions)  # noqa: B010


def _build_date() -> datetime:
    """When this copy of the appliance was built or installed: its package's file time."""
    return datetime.fromtimestamp(Path(appliance.__file__).stat().st_mtime, UTC)


def _quiet_asyncua_loggers() -> None:
    """asyncua logs every session step at INFO and every ServiceFault at ERROR; the face
    logs what matters itself. Only loggers nobody configured are changed."""
    logger = logging.getLogger("asyncua")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
