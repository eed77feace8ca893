"""desktop_worker/tray/icons.py: one icon per state, drawn at run time.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from typing import Any

from desktop_worker.tray.icons import TrayState, draw, icon

pytest_plugins = ["tests.tray_fixtures"]


def test_each_state_has_its_own_icon_drawn_at_run_time(qapp: Any) -> None:
    images = {state: draw(state, 32).toImage() for state in TrayState}
    assert len(images) == 6
    states = list(TrayState)
    for i, first in enumerate(states):
        assert not images[first].isNull()
        for second in states[i + 1 :]:
            assert images[first] != images[second], (first, second)
    assert not icon(TrayState.ERROR).isNull()
