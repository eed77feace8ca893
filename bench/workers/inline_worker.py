"""``desktop-worker --headless`` with runs made in-process (``runner.run_inline``).

Same flags, same engine (claim, lease, finish, spool, heartbeat, changes watcher); only the
child process that the real worker spawns for each run is left out. The end-to-end benchmark
runs both, so the cost of that child (a fresh Python per run) shows on its own.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from desktop_worker import runner
from desktop_worker.cli import overrides_from, parser
from desktop_worker.config import build_config
from desktop_worker.engine import Engine
from desktop_worker.log import setup_logging


class _Finished:
    """A run handle whose run is already over (it ran inline)."""

    pid = None
    progress = None

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def poll(self) -> Any:
        return self.outcome

    def wait(self, timeout: float | None = None) -> Any:
        return self.outcome

    def cancel(self, reason: str = "cancelled") -> None:
        pass


def start_inline(kind: str, input: dict, limits: Any, policy: Any) -> _Finished:
    return _Finished(runner.run_inline(kind, input, limits, policy))


def main() -> int:
    args = parser().parse_args([*sys.argv[1:], "--headless"])
    setup_logging(args.log_level)
    config, _source = build_config(args.config, overrides_from(args))
    engine = Engine(config, start_run=start_inline)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        action = engine.drain if signals["count"] == 1 else engine.stop
        threading.Thread(target=action, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    engine.start()
    while not engine.wait(0.5):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
