"""desktop_worker.forkserver: the start method, and the forkserver and resource tracker
stopped after 2 minutes without runs (runs start through desktop_worker.runner)."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

import pytest

import desktop_worker.forkserver as forkserver_module
from desktop_worker.runner import Limits, Policy, start_run, stop_idle_helpers
from tests.test_runner import assert_gone, finished


def test_runs_fork_from_the_forkserver_on_posix_and_spawn_elsewhere() -> None:
    method = forkserver_module.context().get_start_method()
    forkable = (
        os.name == "posix"
        and "forkserver" in multiprocessing.get_all_start_methods()
        and not getattr(sys, "frozen", False)
    )
    assert method == ("forkserver" if forkable else "spawn")
    assert forkserver_module.context() is forkserver_module.context()  # made once


def _forkserver_pid() -> int | None:
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


needs_forkserver = pytest.mark.skipif(
    os.name != "posix"
    or not hasattr(__import__("multiprocessing.forkserver").forkserver, "_forkserver"),
    reason="the forkserver is the POSIX start method",
)


@needs_forkserver
def test_idle_forkserver_is_stopped_and_comes_back() -> None:
    assert finished(start_run("demo.sleep", {"ms": 0}, Limits(), Policy())).status == "ok"
    pid = _forkserver_pid()
    assert pid is not None
    assert stop_idle_helpers() is True
    assert_gone(pid)
    assert _forkserver_pid() is None
    again = finished(start_run("demo.sleep", {"ms": 0}, Limits(), Policy()))
    assert again.status == "ok", again.error
    assert _forkserver_pid() not in (None, pid)


@needs_forkserver
def test_helpers_stay_while_a_run_is_in_progress() -> None:
    handle = start_run("demo.sleep", {"ms": 5000}, Limits(timeout_s=20), Policy())
    try:
        assert stop_idle_helpers() is False
        assert _forkserver_pid() is not None
    finally:
        handle.cancel()
    assert finished(handle).status == "error"


@needs_forkserver
def test_helpers_stop_by_themselves_after_the_idle_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forkserver_module, "HELPER_IDLE_S", 0.3)
    assert finished(start_run("demo.sleep", {"ms": 0}, Limits(), Policy())).status == "ok"
    pid = _forkserver_pid()
    assert pid is not None
    deadline = time.monotonic() + 10
    while _forkserver_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _forkserver_pid() is None
    assert_gone(pid)
