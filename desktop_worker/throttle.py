"""The owner's CPU cap for one run (decision 13): a duty cycle driven from this process.

Lowering the run's priority alone caps nothing on an otherwise idle PC, which is exactly
when a volunteer notices the fan. So a thread here reads the run's CPU time (the processes
it started included) every ``period`` and suspends the run while it is over its share of
one core: ``SIGSTOP``/``SIGCONT`` to the run's process group on POSIX (scripts too),
``psutil`` suspend/resume on Windows. A suspended run still counts against its time limit.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any


class CpuThrottle:
    """Keeps one run's process (and the processes it started) at ``percent`` of one core.

    A leaky bucket of CPU seconds: every ``period`` the budget grows by
    ``percent / 100 * elapsed`` (holding at most one period's worth, so idle time does
    not buy a long burst later) and shrinks by the CPU time the run used. When it is
    negative the run is suspended until the budget is back to zero. A single-threaded
    CPU-bound run at 25 % thus runs 0.1 s, then stays suspended 0.3 s.
    """

    def __init__(self, pid: int, percent: int, period: float = 0.1) -> None:
        self.pid = pid
        self.share = max(1, min(int(percent), 100)) / 100.0
        self.period = period
        self.suspended_s = 0.0  # total time the run spent suspended (logs, tests)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"couchfarm-cpu-cap-{pid}", daemon=True
        )

    def start(self) -> CpuThrottle:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop throttling and leave the run resumed. Call before the child is reaped."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def _loop(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        budget = 0.0
        last_cpu = self._cpu(proc)
        last = time.monotonic()
        while not self._stop.wait(self.period):
            cpu = self._cpu(proc)
            if cpu is None or last_cpu is None:
                return  # the run is over
            now = time.monotonic()
            budget = min(self.share * self.period, budget + self.share * (now - last))
            budget -= cpu - last_cpu
            last, last_cpu = now, cpu
            if budget >= 0:
                continue
            pause = -budget / self.share
            if not self._signal(proc, stop=True):
                return
            try:
                self._stop.wait(pause)
            finally:
                self._signal(proc, stop=False)
            self.suspended_s += pause
            now = time.monotonic()
            budget = min(self.share * self.period, budget + self.share * (now - last))
            last = now

    @staticmethod
    def _cpu(proc: Any) -> float | None:
        """CPU seconds of the run's process and of every process it started."""
        import psutil

        try:
            times = proc.cpu_times()
            total: float = times.user + times.system + times.children_user + times.children_system
            for child in proc.children(recursive=True):
                try:
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return None

    def _signal(self, proc: Any, *, stop: bool) -> bool:
        """Suspend or resume the run: its whole process group on POSIX (scripts too)."""
        if os.name == "posix":
            sig = signal.SIGSTOP if stop else signal.SIGCONT
            try:
                os.killpg(self.pid, sig)
                return True
            except (ProcessLookupError, PermissionError, OSError):
                pass  # not a group leader yet (it calls setpgrp first thing)
            try:
                os.kill(self.pid, sig)
                return True
            except (ProcessLookupError, PermissionError, OSError):
                return False
        import psutil

        try:
            proc.suspend() if stop else proc.resume()
            return True
        except psutil.Error:
            return False


__all__ = ["CpuThrottle"]
