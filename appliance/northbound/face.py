"""What every face (OPC UA, Modbus slave, archive, metrics) is to the faces process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from appliance.config.schema import SiteConfig
from appliance.control.command_types import CommandResult
from appliance.points.table import PointTable
from appliance.store import Sample, Value

if TYPE_CHECKING:  # the archive imports this module; only the type is needed here
    from appliance.archive.local import HistorySample


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


class HistoryReader(Protocol):
    async def __call__(
        self, point_id: str, start_s: float, end_s: float, limit: int = 0
    ) -> Sequence[HistorySample]:
        """Raw archived samples of one point (OPC UA ReadRaw semantics: start > end reads
        backwards; the end is exclusive; limit 0 = the archive's maximum). Raises
        HistoryUnavailable when the point is not archived locally."""
        ...


@dataclass(frozen=True)
class FaceContext:
    """Everything a face needs: the site, its points, the latest samples, the command path."""

    config: SiteConfig
    table: PointTable
    mirror: Mapping[str, Sample]  # latest sample per point id, updated before `apply` is called
    submit: CommandSubmitter
    #: The local archive's raw history, when this site keeps one (None: no history).
    history: HistoryReader | None = None


class Face(Protocol):
    name: str

    async def start(self) -> None:
        """Bind and serve; raise if the face cannot (the faces process then exits and is restarted)."""
        ...

    def apply(self, changes: Mapping[str, Sample]) -> None:
        """The samples that changed in one core cycle (at most one per point). Must not block."""
        ...

    async def stop(self) -> None: ...
