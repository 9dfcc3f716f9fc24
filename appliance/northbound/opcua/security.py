"""Who may connect and what they may do: users, roles, the service ruleset, certificates.

asyncua's defaults are unsafe for a plant (FreeOpcUa/opcua-asyncio, verified in
shared/reference/opcua.md): its PermissiveUserManager lets the user name "admin" in with any
password as Admin, and Admin bypasses every AccessLevel; without a validator every client
certificate is accepted. So the face installs its own of each:

* `UserDirectory` checks the configured users' PBKDF2 hashes and never hands out asyncua's
  Admin role (Admin can add and delete nodes and write anything). Roles are the appliance's:
  viewer (browse, read, subscribe), operator (also commands), admin (as operator: there is
  nothing more to administer over OPC UA yet). Anonymous sessions, when enabled, are viewers.
* `RoleRuleset` allows the reading and subscription services to every session, refuses node
  management to everyone, and remembers the session's user for the method callbacks (asyncua
  passes them no session), which check `may_command` themselves so that a refused call comes
  back as a per-method Bad_UserAccessDenied.
* `TrustList` accepts a client certificate only if it (or its direct issuer) is in
  `<pki>/trusted`; a refused one is copied to `<pki>/rejected` for the administrator to move.
* `ensure_server_certificate` creates the server's key and a ten-year self-signed
  certificate on first start, with the ApplicationUri and host names in the SAN.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.config.schema import UserConfig
from appliance.config.users import verify_password
from appliance.northbound.opcua.uatypes import ObjectIds, StatusCodes, node_id

if TYPE_CHECKING:
    from asyncua.server.internal_server import InternalServer

log = logging.getLogger(__name__)

Role = Literal["anonymous", "viewer", "operator", "admin"]
COMMAND_ROLES: frozenset[str] = frozenset({"operator", "admin"})

#: After this many wrong passwords for one name within FAILURE_WINDOW_S, that name is
#: refused without hashing until the window has passed: it bounds both password guessing
#: and the time a flood of bad logins can take from the event loop (each check is a full
#: PBKDF2 run, 0.05 .. 0.5 s, and asyncua calls the user manager synchronously).
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0


@dataclass
class ApplianceUser(User):
    """An asyncua session user that carries the appliance role."""

    access: Role = "viewer"

    def __str__(self) -> str:
        return f"{self.name or 'anonymous'} ({self.access})"


def may_command(user: User | None) -> bool:
    return isinstance(user, ApplianceUser) and user.access in COMMAND_ROLES


def user_label(user: User | None) -> str:
    if isinstance(user, ApplianceUser):
        return user.name or "anonymous"
    return "unknown"


# The user of the request being processed. asyncua handles one connection's requests in
# one task, and RoleRuleset.check_validity runs right before each request is dispatched,
# so a method callback (same task) reads the caller from here.
CURRENT_USER: contextvars.ContextVar[User | None] = contextvars.ContextVar(
    "opcua_current_user", default=None
)


class UserDirectory(UserManager):
    """Users from the site configuration, checked against their PBKDF2 hashes."""

    def __init__(
        self, users: Iterable[UserConfig], allow_anonymous: bool, clock: Any = time.monotonic
    ) -> None:
        self._users = {u.name: u for u in users}
        self._allow_anonymous = allow_anonymous
        self._clock = clock
        # Successful logins, keyed by an HMAC of the password under a per-process key, so
        # a reconnecting SCADA does not pay PBKDF2 again (and no password is kept).
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._failures: dict[str, list[float]] = {}
        self.refused = 0

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:
            if self._allow_anonymous:
                return ApplianceUser(role=UserRole.Anonymous, name=None, access="anonymous")
            log.warning("opcua: anonymous login refused (faces.opcua.allow_anonymous is false)")
            self.refused += 1
            return None
        user = self._users.get(username)
        if user is None or password is None or not self._check(username, password, user):
            self.refused += 1
            return None
        # asyncua's User role, never Admin: Admin skips the AccessLevel checks and may
        # change the address space. The appliance role decides the rest.
        return ApplianceUser(role=UserRole.User, name=username, access=user.role)

    def _check(self, name: str, password: str, user: UserConfig) -> bool:
        now = self._clock()
        recent = [t for t in self._failures.get(name, []) if now - t < FAILURE_WINDOW_S]
        self._failures[name] = recent
        if len(recent) >= MAX_FAILURES:
            log.warning("opcua: login for %s refused: too many wrong passwords", name)
            return False
        digest = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        cached = self._verified.get(name)
        if cached is not None and hmac.compare_digest(cached, digest):
            return True
        if verify_password(password, user.password_hash):
            self._verified[name] = digest
            return True
        recent.append(now)
        log.warning("opcua: login for %s refused: wrong password", name)
        return False


_ALWAYS_REFUSED = frozenset(
    node_id(i)
    for i in (
        ObjectIds.AddNodesRequest_Encoding_DefaultBinary,
        ObjectIds.DeleteNodesRequest_Encoding_DefaultBinary,
        ObjectIds.AddReferencesRequest_Encoding_DefaultBinary,
        ObjectIds.DeleteReferencesRequest_Encoding_DefaultBinary,
        ObjectIds.RegisterServerRequest_Encoding_DefaultBinary,
        ObjectIds.RegisterServer2Request_Encoding_DefaultBinary,
        ObjectIds.HistoryUpdateRequest_Encoding_DefaultBinary,
    )
)


class RoleRuleset(SimpleRoleRuleset):
    """Per-service permission check of every request of an activated session."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # asyncua leaves it unannotated

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        if not isinstance(user, ApplianceUser):
            CURRENT_USER.set(None)
            return False  # a session user we did not create: never
        CURRENT_USER.set(user)
        # Write and Call stay allowed for everyone: the write service and the methods
        # refuse per item / per call with Bad_UserAccessDenied (a ServiceFault would fail
        # every value in the request, and some SCADA drivers then drop the connection).
        return action_type_id not in _ALWAYS_REFUSED


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class PkiPaths:
    """The face's certificate folders under `<data_dir>/opcua`."""

    root: Path

    @property
    def own(self) -> Path:
        return self.root / "own"

    @property
    def certificate(self) -> Path:
        return self.own / "server_cert.der"

    @property
    def private_key(self) -> Path:
        return self.own / "server_key.pem"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @property
    def revoked(self) -> Path:
        return self.root / "revoked"

    def create(self) -> None:
        for folder in (self.own, self.trusted, self.rejected, self.revoked):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.own, 0o700)


SERVER_CERT_DAYS = 3650


def ensure_server_certificate(
    paths: PkiPaths, application_uri: str, hosts: Iterable[str], common_name: str
) -> None:
    """Create the server key and certificate once; an existing pair is kept as it is.

    The certificate is valid for ten years: every SCADA trusts it by thumbprint, and a new
    one (asyncua's helper regenerates yearly) forces every client to trust it again.
    """
    paths.create()
    if paths.certificate.exists() and paths.private_key.exists():
        _check_existing(paths.certificate, application_uri)
        return
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        common_name,
        {"organizationName": "appliance"},
        names,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=SERVER_CERT_DAYS,
    )
    fd = os.open(paths.private_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(cert_gen.dump_private_key_as_pem(key))
    paths.certificate.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    log.info(
        "opcua: created server certificate %s (thumbprint %s)",
        paths.certificate,
        thumbprint(cert),
    )


def _check_existing(path: Path, application_uri: str) -> None:
    cert = x509.load_der_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if application_uri not in uris:
        log.error(
            "opcua: server certificate %s names %s, not the ApplicationUri %s; clients will "
            "reject it (BadCertificateUriInvalid). Delete it to have a new one made.",
            path,
            uris,
            application_uri,
        )
    if cert.not_valid_after_utc.timestamp() < time.time():
        log.error("opcua: server certificate %s expired on %s", path, cert.not_valid_after_utc)


def server_hosts(bind: str) -> list[str]:
    """Names a client may use for this server, for the certificate's SAN."""
    hosts = [socket.gethostname(), "localhost"]
    if bind not in ("0.0.0.0", "::"):  # noqa: S104 - comparing names, not binding
        hosts.append(bind)
    return hosts


def thumbprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - OPC UA thumbprints are SHA-1


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "unnamed"


#: Rejected certificates kept at most; beyond that new ones are only logged, so that a
#: client generating certificates cannot fill the disk.
MAX_REJECTED = 200


class TrustList:
    """Client certificate check run by asyncua at CreateSession.

    Accepted: a certificate within its validity whose SAN URI equals the client's
    ApplicationUri, and that is itself in `trusted/` or is signed by a CA certificate
    there (one level) that has not revoked it (CRLs in `revoked/`). The folders are read
    again at every session, so a certificate moved from `rejected/` to `trusted/` works at
    the client's next connect attempt, without a restart.
    """

    def __init__(self, paths: PkiPaths, now: Any = time.time) -> None:
        self._paths = paths
        self._now = now
        self.rejected = 0

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        problem = self._time_and_uri_problem(cert, app)
        if problem is None:
            trusted, revoked = await asyncio.to_thread(self._load)
            problem = self._trust_problem(cert, trusted, revoked)
        if problem is None:
            log.info(
                "opcua: client certificate %s (%s) accepted",
                _common_name(cert),
                thumbprint(cert),
            )
            return
        code, reason = problem
        self.rejected += 1
        stored = await asyncio.to_thread(self._store_rejected, cert)
        log.warning(
            "opcua: client certificate %s (%s, ApplicationUri %s) rejected: %s%s",
            _common_name(cert),
            thumbprint(cert),
            app.ApplicationUri,
            reason,
            f"; copied to {stored} (move it to {self._paths.trusted} to trust it)"
            if stored
            else "",
        )
        raise ServiceError(code)

    def _time_and_uri_problem(
        self, cert: x509.Certificate, app: ua.ApplicationDescription
    ) -> tuple[int, str] | None:
        now = self._now()
        if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
            return StatusCodes.BadCertificateTimeInvalid, "outside its validity period"
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return StatusCodes.BadCertificateInvalid, "no subjectAltName"
        if app.ApplicationUri not in san.get_values_for_type(x509.UniformResourceIdentifier):
            return (
                StatusCodes.BadCertificateUriInvalid,
                "its URI is not the client's ApplicationUri",
            )
        return None

    def _trust_problem(
        self,
        cert: x509.Certificate,
        trusted: list[x509.Certificate],
        revoked: list[x509.CertificateRevocationList],
    ) -> tuple[int, str] | None:
        der = cert.public_bytes(serialization.Encoding.DER)
        if any(t.public_bytes(serialization.Encoding.DER) == der for t in trusted):
            return None
        for issuer in trusted:
            if issuer.subject != cert.issuer or not _is_ca(issuer):
                continue
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            for crl in revoked:
                if crl.issuer == issuer.subject and crl.get_revoked_certificate_by_serial_number(
                    cert.serial_number
                ):
                    return StatusCodes.BadCertificateRevoked, "revoked by its issuer"
            return None
        return StatusCodes.BadCertificateUntrusted, "not in the trust list"

    def _load(self) -> tuple[list[x509.Certificate], list[x509.CertificateRevocationList]]:
        trusted = [c for f in _files(self._paths.trusted) if (c := _load_cert(f)) is not None]
        revoked = [r for f in _files(self._paths.revoked) if (r := _load_crl(f)) is not None]
        return trusted, revoked

    def _store_rejected(self, cert: x509.Certificate) -> Path | None:
        folder = self._paths.rejected
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", _common_name(cert))[:64]
        target = folder / f"{name} [{thumbprint(cert)}].der"
        if target.exists():
            return target
        if len(list(folder.glob("*.der"))) >= MAX_REJECTED:
            return None
        target.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        return target


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in (".der", ".pem", ".crt", ".crl")
    )


def _load_cert(path: Path) -> x509.Certificate | None:
    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        log.warning("opcua: %s in the trust list is not a certificate; ignored", path)
        return None


def _load_crl(path: Path) -> x509.CertificateRevocationList | None:
    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        log.warning("opcua: %s in revoked/ is not a CRL; ignored", path)
        return None
