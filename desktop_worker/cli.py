"""The ``desktop-worker`` command.

``desktop-worker --headless --hub URL[,STANDBY_URL] --name NAME [--password-file F]
[--tubes a,b] [--slots N] [--allow-private-network] [--config FILE] [--db farm]``

Without ``--headless`` it starts the tray app (``desktop_worker.tray.app``).
SIGTERM (and a first Ctrl-C) drains: runs in progress finish, nothing new is claimed, then
the worker exits. A second signal stops at once, handing running leases back.

``desktop-worker --self-test`` checks the installation (see ``desktop_worker.selftest``).

Exit codes: 0 stopped normally, 2 bad usage or settings (``--self-test``: 0 ok, 1 failed).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from desktop_worker.config import ConfigError, build_config
from desktop_worker.log import log_event, setup_logging
from hub.protocol.version import __version__


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="desktop-worker",
        description="Couchfarm worker: claims occurrences from the hub, runs them, reports.",
    )
    p.add_argument("--version", action="version", version=f"couchfarm {__version__}")
    p.add_argument("--headless", action="store_true", help="run the engine without the tray app")
    p.add_argument("--hub", help="hub CouchDB URL(s), primary first: URL[,STANDBY_URL]")
    p.add_argument("--name", help="this worker's name (its CouchDB user)")
    p.add_argument("--password-file", help="file holding the worker's password")
    p.add_argument("--tubes", help="comma-separated tubes to serve (default: default)")
    p.add_argument("--slots", type=int, help="runs at the same time (default 1)")
    p.add_argument(
        "--allow-private-network",
        action="store_true",
        default=None,
        help="let network kinds reach private/loopback addresses",
    )
    p.add_argument("--kinds", help="comma-separated kinds to run (default: all built-in)")
    p.add_argument("--config", help="TOML settings file; flags override it")
    p.add_argument("--db", help="live database name (default farm)")
    p.add_argument("--spool", help="spool file (default: in the user data directory)")
    p.add_argument("--claim-k", type=int, help="pick at random among the first K ready rows")
    p.add_argument(
        "--claim-ahead",
        type=int,
        help="in a backlog, claim this many more than the free slots in one request (0: off)",
    )
    p.add_argument("--ca-bundle", help="CA bundle for the hub's TLS certificate")
    p.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates (testing only)"
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument(
        "--self-test",
        action="store_true",
        help="check this installation (Qt, engine, handlers, a child run, TLS, keyring), "
        "print one line and exit 0 or 1",
    )
    return p


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "hub_urls": _split(args.hub),
        "name": args.name,
        "password_file": args.password_file,
        "tubes": _split(args.tubes),
        "slots": args.slots,
        "allow_private_network": args.allow_private_network,
        "kinds": _split(args.kinds),
        "db": args.db,
        "spool_path": Path(args.spool) if args.spool else None,
        "claim_k": args.claim_k,
        "claim_ahead": args.claim_ahead,
        "ca_bundle": args.ca_bundle,
        "verify_tls": False if args.insecure else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    if getattr(sys, "frozen", False):
        # In a frozen bundle a run's child process starts this same executable: hand it
        # over to multiprocessing before anything else happens. Not imported otherwise:
        # an idle tray has no use for multiprocessing until its first run.
        import multiprocessing

        multiprocessing.freeze_support()
    args = parser().parse_args(argv)
    if args.self_test:
        from desktop_worker import selftest

        return selftest.main()
    if not args.headless:
        # The tray app (PySide6) drives the same engine; imported only when asked for, so
        # a headless worker never loads Qt.
        from desktop_worker.tray.app import main as tray_main

        return tray_main(list(argv) if argv is not None else None)
    setup_logging(args.log_level)
    try:
        config, source = build_config(args.config, overrides_from(args))
    except ConfigError as exc:
        print(f"desktop-worker: {exc}", file=sys.stderr)
        return 2
    log_event("password_source", worker=config.name, source=source)

    from desktop_worker.engine import Engine

    engine = Engine(config)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        name = signal.Signals(signum).name
        if signals["count"] == 1:
            log_event("signal", signal=name, action="drain")
            threading.Thread(target=engine.drain, daemon=True).start()
        else:
            log_event("signal", signal=name, action="stop")
            threading.Thread(target=engine.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    engine.start()
    while not engine.wait(0.5):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
