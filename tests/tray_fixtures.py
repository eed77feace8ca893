"""The tray tests' fixtures, loaded by each tests/test_tray_*.py with ``pytest_plugins`` (a
module of its own, which no test imports, so that pytest can rewrite its asserts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop_worker.tray.clock import FakeClock
from tests.tray_harness import TUESDAY_9AM, Harness, make_harness


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(TUESDAY_9AM)


@pytest.fixture
def tray(qtbot: Any, tmp_path: Path, clock: FakeClock) -> Iterator[Harness]:
    harness = make_harness(qtbot, tmp_path, clock)
    yield harness
    if not harness.app.exited:
        harness.app.shutdown()
