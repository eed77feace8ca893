"""The lifecycle of the processes that runs start from: the start method and its helpers.

On POSIX runs fork from multiprocessing's forkserver, which has the runner and the
handlers imported already (a run starts in milliseconds, not ~160 ms with ``spawn``);
Windows and frozen bundles use ``spawn`` (:func:`context`). The forkserver and its
resource tracker are two long-lived processes, about 35 MB and 13 MB resident, only worth
keeping while work comes in: the runner counts the runs in progress (:func:`run_began`,
:func:`run_ended`), and once none has been in progress for ``HELPER_IDLE_S`` (2 minutes)
both are stopped (:func:`stop_idle_helpers`); the next run starts them again (about
0.3 s, once).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
from typing import Any

from desktop_worker.log import log_event

HELPER_IDLE_S = 120.0  # stop the forkserver and resource tracker after this long without runs

_CONTEXT: Any = None
_helpers_lock = threading.Lock()
_active_runs = 0
_helpers_timer: threading.Timer | None = None


def run_began() -> None:
    global _active_runs, _helpers_timer
    with _helpers_lock:
        _active_runs += 1
        if _helpers_timer is not None:
            _helpers_timer.cancel()
            _helpers_timer = None


def run_ended() -> None:
    global _active_runs, _helpers_timer
    with _helpers_lock:
        _active_runs = max(0, _active_runs - 1)
        if _active_runs or _CONTEXT is None or _CONTEXT.get_start_method() != "forkserver":
            return
        if _helpers_timer is not None:
            _helpers_timer.cancel()
        _helpers_timer = threading.Timer(HELPER_IDLE_S, stop_idle_helpers)
        _helpers_timer.daemon = True
        _helpers_timer.start()


def stop_idle_helpers() -> bool:
    """Stop the forkserver and the resource tracker if no run is in progress.

    True when something was stopped. Uses multiprocessing's own ``_stop`` methods (its
    test suite's way of stopping them); where those do not exist, nothing happens. The
    next ``start_run`` starts both again. Safe because the worker process uses
    multiprocessing only through the runner and this module: the tracker holds nothing of
    anyone else's.
    """
    global _helpers_timer
    from multiprocessing import forkserver, resource_tracker

    stopped = []
    with _helpers_lock:
        _helpers_timer = None
        if _active_runs:
            return False
        for name, helper, pid_attr in (
            ("forkserver", getattr(forkserver, "_forkserver", None), "_forkserver_pid"),
            ("resource_tracker", getattr(resource_tracker, "_resource_tracker", None), "_pid"),
        ):
            stop = getattr(helper, "_stop", None)
            pid = getattr(helper, pid_attr, None)
            if stop is None or pid is None:
                continue
            try:
                stop()
                stopped.append(f"{name} (pid {pid})")
            except (OSError, ChildProcessError) as exc:
                log_event("runner_helper_stop_failed", logging.WARNING, helper=name, error=str(exc))
    if stopped:
        log_event("runner_helpers_stopped", idle_s=HELPER_IDLE_S, stopped=stopped)
    return bool(stopped)


def context() -> Any:
    """The multiprocessing context runs start from. ``forkserver`` on POSIX: each run is
    still its own fresh child process (killable, memory-capped), but it forks from a
    server that has already imported the runner and handlers, which cuts the start of a
    run from ~160 ms to a few ms. ``spawn`` on Windows, and in frozen bundles, where
    forkserver is unavailable or fragile."""
    global _CONTEXT
    if _CONTEXT is None:
        methods = multiprocessing.get_all_start_methods()
        if os.name == "posix" and "forkserver" in methods and not getattr(sys, "frozen", False):
            _CONTEXT = multiprocessing.get_context("forkserver")
            # Everything a run's child would import again otherwise (pydantic models, config):
            # measured 155 ms of CPU per run without them, 26 ms with.
            _CONTEXT.set_forkserver_preload(
                ["desktop_worker.runner", "desktop_worker.handlers", "hub.protocol.model",
                 "desktop_worker.config"]
            )  # fmt: skip
        else:
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT


__all__ = ["HELPER_IDLE_S", "context", "run_began", "run_ended", "stop_idle_helpers"]
