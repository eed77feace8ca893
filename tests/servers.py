"""Servers a fault test may stop, kill -9, wipe and restart (issue 21).

On PouchDB Server (the default, and CI) a fault test starts its own servers under its
``tmp_path`` and faults them through ``hub.devserver.DevServer``, as it always did. On a
real CouchDB (``COUCHDB_URL`` set) the suite's own pair is never faulted: killing it would
wreck the rest of the run. The fault tests use a dedicated pair instead, and fault it by
running shell commands:

``COUCHDB_FAULT_PRIMARY_URL``
    the server the fault tests kill, stop, wipe and restart (all of them);
``COUCHDB_FAULT_STANDBY_URL``
    its standby (``tests/test_failover.py``; never faulted, only written to);
``COUCHDB_KILL_CMD``
    kill -9 the server, returning once it is dead;
``COUCHDB_STOP_CMD``
    stop it cleanly, returning once it is down;
``COUCHDB_WIPE_CMD``
    delete its data (it is stopped or dead when this runs); it must come back empty but
    with its configuration, admin included;
``COUCHDB_START_CMD``
    start it again on the same address.

Each command is run by ``sh -c`` after ``str.format`` with ``{url}``, ``{host}`` and
``{port}`` of the server being faulted. Afterwards the harness itself waits until the
server refuses connections (kill, stop), or until ``GET /_session`` answers as admin and
``_users`` and ``_replicator`` exist (start). Both fault servers take the suite's admin,
``COUCHDB_USER``/``COUCHDB_PASSWORD`` (default admin/admin). For example, with one data
directory per port::

    COUCHDB_FAULT_PRIMARY_URL=http://127.0.0.1:6984
    COUCHDB_FAULT_STANDBY_URL=http://127.0.0.1:6986
    COUCHDB_KILL_CMD='couchctl kill -9 {port}'
    COUCHDB_STOP_CMD='couchctl stop {port}'
    COUCHDB_WIPE_CMD='rm -rf /srv/couchdb/{port}/data'
    COUCHDB_START_CMD='couchctl start {port}'

On a real CouchDB without these variables the fault tests skip, naming what is missing.
A fault URL that is the suite's ``COUCHDB_URL`` or ``COUCHDB_STANDBY_URL`` is refused.
The fault servers outlive the test (``persistent``): tests give their databases names of
their own per run, drop them afterwards, and leave each server running.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import pytest
import requests

from hub.devserver import DevServer

COMMANDS = ("COUCHDB_KILL_CMD", "COUCHDB_STOP_CMD", "COUCHDB_WIPE_CMD", "COUCHDB_START_CMD")
SUITE_URLS = ("COUCHDB_URL", "COUCHDB_STANDBY_URL")


class ControlledServer(Protocol):
    """A server a test may fault. ``persistent``: it outlives the test (a real CouchDB)."""

    @property
    def url(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def admin_user(self) -> str: ...
    @property
    def admin_password(self) -> str: ...
    @property
    def persistent(self) -> bool: ...

    def kill(self) -> None:
        """kill -9, as a crash would."""

    def stop(self) -> None:
        """A clean shutdown."""

    def wipe(self) -> None:
        """Delete its data; only while it is down."""

    def start(self) -> None:
        """Start it (again) on the same address; returns once it answers."""

    def close(self) -> None:
        """The end of the test: a server of the test's own stops, a persistent one is left
        running."""


class DevControlled:
    """A PouchDB Server of the test's own (today's behaviour)."""

    persistent = False

    def __init__(self, data_dir: Path, admin_password: str) -> None:
        self.dev = DevServer(data_dir, admin_password=admin_password).start()

    @property
    def url(self) -> str:
        return self.dev.url

    @property
    def port(self) -> int:
        return self.dev.port

    @property
    def admin_user(self) -> str:
        return self.dev.admin_user

    @property
    def admin_password(self) -> str:
        return self.dev.admin_password

    def kill(self) -> None:
        self.dev.kill()

    def stop(self) -> None:
        self.dev.stop()

    def wipe(self) -> None:
        shutil.rmtree(self.dev.data_dir)

    def start(self) -> None:
        self.dev.start()  # the same data directory and port

    def close(self) -> None:
        self.dev.stop()


@dataclass
class CommandControlled:
    """A real CouchDB faulted through the ``COUCHDB_*_CMD`` commands."""

    url: str
    admin_user: str
    admin_password: str
    commands: dict[str, str]
    timeout: float = 180.0
    persistent = True

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def _run(self, var: str) -> None:
        command = self.commands[var].format(url=self.url, host=self.host, port=self.port)
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                              timeout=self.timeout, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"{var} ({command!r}) exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )

    def answers(self) -> bool:
        try:
            requests.get(f"{self.url}/", timeout=2)
            return True
        except requests.RequestException:
            return False

    def _wait_down(self) -> None:
        deadline = time.monotonic() + self.timeout
        while self.answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.url} still answers {self.timeout:.0f} s after its end")
            time.sleep(0.1)

    def _wait_up(self) -> None:
        """Up as admin, with the system databases that CouchDB 3 creates at start."""
        auth = (self.admin_user, self.admin_password)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                session = requests.get(f"{self.url}/_session", auth=auth, timeout=2)
                if (
                    session.ok
                    and "_admin" in session.json()["userCtx"]["roles"]
                    and all(
                        requests.get(f"{self.url}/{db}", auth=auth, timeout=2).ok
                        for db in ("_users", "_replicator")
                    )
                ):
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.url} did not answer as {self.admin_user} with _users and "
                    f"_replicator within {self.timeout:.0f} s of COUCHDB_START_CMD"
                )
            time.sleep(0.2)

    def kill(self) -> None:
        self._run("COUCHDB_KILL_CMD")
        self._wait_down()

    def stop(self) -> None:
        self._run("COUCHDB_STOP_CMD")
        self._wait_down()

    def wipe(self) -> None:
        if self.answers():
            raise RuntimeError(f"refusing to wipe {self.url} while it is running")
        self._run("COUCHDB_WIPE_CMD")

    def start(self) -> None:
        self._run("COUCHDB_START_CMD")
        self._wait_up()

    def close(self) -> None:
        if not self.answers():
            self.start()


def _address(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        host = socket.gethostbyname(host)
    except OSError:
        pass
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def _from_env(names: tuple[str, ...]) -> list[CommandControlled]:
    url_vars = [f"COUCHDB_FAULT_{name.upper()}_URL" for name in names]
    missing = [var for var in (*url_vars, *COMMANDS) if not os.environ.get(var)]
    if missing:
        pytest.skip(
            "fault test on a real CouchDB: set " + ", ".join(missing) + " (a dedicated "
            "server to fault and the commands that kill -9, stop, wipe and start it; "
            "see tests/servers.py)"
        )
    suite = {_address(os.environ[var]): var for var in SUITE_URLS if os.environ.get(var)}
    commands = {var: os.environ[var] for var in COMMANDS}
    servers = []
    for var in url_vars:
        url = os.environ[var].rstrip("/")
        if _address(url) in suite:
            raise ValueError(
                f"{var}={url} is the suite's {suite[_address(url)]}: the fault tests kill, "
                "wipe and restart it, so give them a server of their own"
            )
        servers.append(
            CommandControlled(
                url,
                os.environ.get("COUCHDB_USER", "admin"),
                os.environ.get("COUCHDB_PASSWORD", "admin"),
                commands,
            )
        )
    return servers


@contextmanager
def fault_servers(
    tmp: Path, *names: str, real: bool, admin_password: str | None = None
) -> Iterator[list[ControlledServer]]:
    """The servers named (``"primary"``, ``"standby"``) for one fault test, running.

    ``real=False``: new PouchDB Servers in ``tmp/NAME`` with ``admin_password`` (default:
    a new one), stopped at the end. ``real=True``: the ``COUCHDB_FAULT_NAME_URL`` servers
    (skips the test when the variables are not set), started if they are down, and left
    running at the end."""
    servers: list[ControlledServer] = []
    try:
        if real:
            for server in _from_env(names):
                servers.append(server)
                server.close()  # a run that died mid-fault may have left it down
        else:
            password = admin_password or secrets.token_urlsafe(12)
            for name in names:
                servers.append(DevControlled(tmp / name, password))
        yield servers
    finally:
        for server in servers:
            server.close()
