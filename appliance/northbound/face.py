"""What every face (OPC UA, Modbus slave, archive, metrics) is to the faces process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from appliance.config.schema import SiteConfig
from appliance.control.command_types import CommandResult
from appliance.points.table import PointTable
from appliance.store import Sample, Value


class CommandSubmitter(Protocol):
    async def __call__(
        self,
        source: str,
        command: str,
        point_id: str | None,
        value: Value | None,
        user: str | None = None,
    ) -> CommandResult:
        """Send a command to the core and wait for its Accepted / Rejected answer.

        Never raises for a rejected or unanswered command: a core that does not answer in
        time gives Rejected with code UNAVAILABLE.
        """
        ...


@dataclass(frozen=True)
class FaceContext:
    """Everything a face needs: the site, its points, the latest samples, the command path."""

    config: SiteConfig
    table: PointTable
    mirror: Mapping[str, Sample]  # latest sample per point id, updated before `apply` is called
    submit: CommandSubmitter


class Face(Protocol):
    name: str

    async def start(self) -> None:
        """Bind and serve; raise if the face cannot (the faces process then exits and is restarted)."""
        ...

    def apply(self, changes: Mapping[str, Sample]) -> None:
        """The samples that changed in one core cycle (at most one per point). Must not block."""
        ...

    async def stop(self) -> None: ...
