"""The appliance's exception hierarchy: one base, typed subclasses per failure kind."""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""


class ConfigError(ApplianceError):
    """A site configuration or model file is invalid; the message names file, field and rule."""


class DriverError(ApplianceError):
    """A southbound device could not be read or commanded."""


class DeviceTimeout(DriverError):
    """The device did not answer in time (transient: retried with back-off)."""


class DeviceProtocolError(DriverError):
    """The device answered with an exception, a malformed frame or an implausible value (transient)."""


class DeviceUnavailable(DriverError):
    """The link to the device is down: connection refused, port missing (transient)."""


class NotSupported(DriverError):
    """The device cannot do what was asked (permanent: not retried)."""


class CommandRejected(ApplianceError):
    """A northbound command was refused; the message says why."""
