"""Start and stop a local PouchDB Server: the CouchDB stand-in for tests and the demo.

This module is the one place that knows how to run PouchDB Server (see
``docs/POUCHDB_DIFFERENCES.md``): the Node flag that keeps bad requests from killing it,
the config file inside the data directory, and an admin set before start, so the server
never runs as an admin party. Production uses CouchDB 3 and never imports this module.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
# Inside a checkout, server data (databases, config.json, log.txt, server.out) belongs under
# this ignored folder: a log.txt written at the root was once committed.
SCRATCH_DIR = REPO_ROOT / "var"
SERVER_SCRIPT = REPO_ROOT / "node_modules" / "pouchdb-server" / "bin" / "pouchdb-server"
# Source fixes preloaded into the server; each is described in the file itself.
FIXES_SCRIPT = Path(__file__).resolve().parent / "pouchdb_fixes.js"
FIXES_APPLIED = (
    b"couchfarm pouchdb_fixes: applied pouchdb-validation",
    b"couchfarm pouchdb_fixes: applied pouchdb-update",
)


class DevServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_outside_the_source_tree(data_dir: Path) -> None:
    """PouchDB Server writes its databases and logs into its data directory (its working
    directory too): refuse one in the checkout but outside ``var/``."""
    where = data_dir.resolve()
    if where.is_relative_to(REPO_ROOT) and not where.is_relative_to(SCRATCH_DIR):
        raise DevServerError(
            f"PouchDB Server data directory {data_dir} is inside the source tree: its "
            f"databases and log.txt would show in git status; use a folder under "
            f"{SCRATCH_DIR}/ (ignored) or outside the checkout"
        )


@dataclass
class DevServer:
    """One PouchDB Server process on a loopback port, with its own data directory."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    admin_user: str = "admin"
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def request_log(self) -> Path:
        return self.data_dir / "log.txt"

    def start(self, timeout: float = 60.0) -> DevServer:
        if not SERVER_SCRIPT.exists():
            raise DevServerError(
                f"PouchDB Server is not installed ({SERVER_SCRIPT} is missing): run 'make setup'"
            )
        node = shutil.which("node")
        if node is None:
            raise DevServerError("Node.js is not on PATH; 'make setup' installs it with apt-get")
        _check_outside_the_source_tree(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        config_path = self.data_dir / "config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        # A plaintext admin password in config.json is hashed by the server at start-up.
        config.setdefault("admins", {})[self.admin_user] = self.admin_password
        config["log"] = {"file": str(self.request_log), "level": "info"}
        config_path.write_text(json.dumps(config, indent=2))
        out_path = self.data_dir / "server.out"
        out_from = out_path.stat().st_size if out_path.exists() else 0
        stdout = out_path.open("ab")
        self.process = subprocess.Popen(
            [
                node,
                "--unhandled-rejections=warn",
                "--require",
                str(FIXES_SCRIPT),
                str(SERVER_SCRIPT),
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
                "-c",
                str(config_path),
            ],
            cwd=self.data_dir,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stdout.close()
        self._wait_until_up(timeout)
        self._check_fixes_applied(out_path, out_from)
        return self

    def _check_fixes_applied(self, out_path: Path, out_from: int, wait: float = 10.0) -> None:
        """The server must say it loaded the patched module (``pouchdb_fixes.js``)."""
        deadline = time.monotonic() + wait
        while True:
            with out_path.open("rb") as out:
                out.seek(out_from)
                said = out.read()
                if all(marker in said for marker in FIXES_APPLIED):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise DevServerError(
                    f"PouchDB Server started without its fixes ({FIXES_SCRIPT.name} never "
                    f"patched pouchdb-validation and pouchdb-update; see {out_path}): is "
                    "node_modules the "
                    "version pinned in package.json?"
                )
            time.sleep(0.1)

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = (self.data_dir / "server.out").read_text(errors="replace")[-2000:]
                raise DevServerError(f"PouchDB Server exited at start-up:\n{tail}")
            try:
                reply = requests.get(
                    f"{self.url}/_session", auth=(self.admin_user, self.admin_password), timeout=2
                )
                if reply.status_code == 200 and "_admin" in reply.json()["userCtx"]["roles"]:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise DevServerError(f"PouchDB Server did not answer on {self.url} within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
