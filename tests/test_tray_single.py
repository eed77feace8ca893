"""desktop_worker/tray/single.py: one instance per user.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from desktop_worker.tray.clock import FakeClock
from desktop_worker.tray.single import SingleInstance
from tests.tray_harness import (
    make_harness,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_second_launch_brings_the_first_to_the_front(
    qtbot: Any, tmp_path: Path, clock: FakeClock
) -> None:
    name = f"couchfarm-test-{os.getpid()}-{id(tmp_path)}"
    first = SingleInstance(name)
    assert first.claim()
    harness = make_harness(qtbot, tmp_path, clock, single=first)
    try:
        assert not harness.app.window.isVisible()
        second = SingleInstance(name)
        with qtbot.waitSignal(first.activated):
            assert second.claim() is False
        qtbot.waitUntil(harness.app.window.isVisible, timeout=2000)
    finally:
        harness.app.shutdown()
    third = SingleInstance(name)  # the first has gone: the next launch becomes the one
    assert third.claim()
    third.close()


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="Unix sockets (QLocalServer on Windows)")
def test_single_instance_socket_is_private_and_replaces_a_crashed_ones(
    qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    name = f"couchfarm-test-{os.getpid()}"
    path = tmp_path / name
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(str(path))  # what a killed instance leaves: a socket file nobody answers
    crashed.close()
    first = SingleInstance(name)
    assert first.claim()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A client that connects and says nothing holds nobody up; "show" still gets through.
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(str(path))
    try:
        qtbot.wait(100)  # accepted, nothing to read yet
        with qtbot.waitSignal(first.activated, timeout=3000):
            assert SingleInstance(name).claim() is False
        with qtbot.waitSignal(first.activated, timeout=3000):  # its words, when they come
            slow.sendall(b"show\n")
    finally:
        slow.close()
    first.close()
    assert not path.exists()
    # Closing removes only its own socket file, never a newer instance's.
    second = SingleInstance(name)
    assert second.claim()
    first.close()
    assert path.exists()
    second.close()
    assert not path.exists()
