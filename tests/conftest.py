"""Suite-wide guards: no leaked asyncio tasks, no broken log formatting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest


class _FormatCheckingHandler(logging.Handler):
    """Formats every record so a bad %-format in a log call fails the test that made it."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.getMessage()
        except (TypeError, ValueError) as exc:
            self.errors.append(f"{record.pathname}:{record.lineno}: {exc}")


@pytest.fixture(autouse=True)
def fail_on_bad_log_formatting() -> Iterator[None]:
    handler = _FormatCheckingHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    assert handler.errors == [], f"bad log formatting: {handler.errors}"


@pytest.fixture(autouse=True)
async def fail_on_leaked_tasks() -> AsyncIterator[None]:
    """A test that leaves tasks running has a resource leak; name them and fail."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    if leaked:
        # Give cancellation-in-progress a moment to finish before calling it a leak.
        await asyncio.sleep(0.05)
        leaked = [t for t in leaked if not t.done()]
    for task in leaked:
        task.cancel()
    assert leaked == [], f"leaked tasks: {[t.get_name() for t in leaked]}"
