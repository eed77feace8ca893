"""desktop_worker/tray/app.py: the app as a whole (the Qt binding it needs, an engine that
cannot start, the owner's caps on runs).

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desktop_worker.config import WorkerConfig
from desktop_worker.tray.clock import FakeClock
from tests.tray_harness import (
    make_harness,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_pyside_is_not_the_release_that_loses_references() -> None:
    """PySide6 6.12.0 drops a reference to None/True on every Python slot call, so a tray
    app that runs for hours aborts (none_dealloc). pyproject.toml must exclude it."""
    import PySide6

    assert PySide6.__version__ != "6.12.0", (
        "PySide6 6.12.0 corrupts reference counts on every slot call; "
        "install pyside6-essentials 6.11.x (pin '!=6.12.0')"
    )


def test_an_engine_that_cannot_start_is_an_error_state(
    qtbot: Any, tmp_path: Path, clock: FakeClock
) -> None:
    def broken(_config: WorkerConfig) -> Any:
        raise ValueError("no CouchDB server URL given")

    harness = make_harness(qtbot, tmp_path, clock, factory=broken)
    try:
        qtbot.waitUntil(lambda: harness.app.model.engine_state == "error", timeout=3000)
        assert "the worker cannot start: no CouchDB server URL given" in (
            harness.app.tray.icon.toolTip()
        )
        assert harness.menu("status").text().startswith("Error: the worker cannot start")
        harness.menu("quit").trigger()
        assert harness.quits == [1]
    finally:
        if not harness.app.exited:
            harness.app.shutdown()


def test_default_engine_runs_get_the_owners_caps() -> None:
    from desktop_worker.runner import Limits, Policy
    from desktop_worker.tray.app import capped_runs

    config = WorkerConfig(cpu_cap_percent=40, bandwidth_cap_kbps=8)
    handle = capped_runs(config)("demo.sleep", {"ms": 0}, Limits(timeout_s=20), Policy())
    assert handle.wait(timeout=15) is not None
    assert (handle.limits.cpu_cap_percent, handle.limits.bandwidth_bps) == (40, 8 * 1024)
