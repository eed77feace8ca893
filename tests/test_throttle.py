"""desktop_worker.throttle: the CPU cap's duty cycle on a real process (no timing asserted:
only that it suspends a busy process, and leaves it running when stopped)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from desktop_worker.throttle import CpuThrottle
from tests.waiting import wait_for

BUSY = "while True:\n    pass\n"


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    # Its own session: the throttle signals the run's process group, as the runner's child
    # leads one.
    process = subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_busy_process_over_its_share_is_suspended_then_resumed(
    busy: subprocess.Popen[bytes],
) -> None:
    throttle = CpuThrottle(busy.pid, 10).start()
    try:
        wait_for(lambda: throttle.suspended_s > 0, timeout=20)
    finally:
        throttle.stop()
    # Stopped: the run is left resumed, never frozen.
    assert psutil.Process(busy.pid).status() != psutil.STATUS_STOPPED
    assert busy.poll() is None


def test_the_share_is_held_between_one_and_a_hundred_percent() -> None:
    assert CpuThrottle(os.getpid(), 0).share == 0.01
    assert CpuThrottle(os.getpid(), 250).share == 1.0


def test_the_throttle_ends_by_itself_when_the_process_is_gone() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    process.wait(timeout=10)
    throttle = CpuThrottle(process.pid, 10).start()
    wait_for(lambda: not throttle._thread.is_alive(), timeout=10)
    throttle.stop()
