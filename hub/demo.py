"""``make demo``: the whole system on this machine, and where to find each part.

Starts a primary and a standby PouchDB Server (or uses ``COUCHDB_URL`` /
``COUCHDB_STANDBY_URL``), runs ``hub init`` on both, creates a demo client, a demo
worker and demo tasks for two clients, starts the parts of the system that exist, prints URLs and
credentials, and runs until Ctrl-C (or ``--seconds``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hub import provision
from hub.devserver import REPO_ROOT, DevServer, free_port
from hub.protocol.couch import Conflict, Couch
from hub.protocol.model import Task, task_id
from hub.protocol.names import ADMIN_ROLE, CLIENT_ROLE_PREFIX, WORKER_ROLE
from hub.protocol.timefmt import to_wire

DEMO_DIR = REPO_ROOT / "var" / "demo"
ADMIN_PASSWORD = "demo-admin"
PASSWORDS = {
    "hub": "demo-hub",
    "demo-worker": "demo-worker",
    "demo": "demo-client",
    "acme": "acme-client",
}


def _server(role: str, env_var: str, port: int) -> tuple[str, DevServer | None]:
    url = os.environ.get(env_var)
    if url:
        return url.rstrip("/"), None
    dev = DevServer(DEMO_DIR / role, port=_port_or_free(port), admin_password=ADMIN_PASSWORD)
    dev.start()
    return dev.url, dev


def _port_or_free(preferred: int) -> int:
    """The demo's usual port when it is free, so URLs stay the same from run to run."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


# (client, slug, what it shows, kind input, schedule, task options)
DEMO_TASKS: tuple[tuple[str, str, str, dict, dict, dict], ...] = (
    ("demo", "heartbeat", "demo.sleep 0.3 s every 10 s, fails 10 % (retries)",
     {"ms": 300, "fail_rate": 0.1}, {"every": 10}, {"ttr": 30}),
    ("demo", "quick", "demo.sleep 0.1 s every 5 s, priority 10 (ahead of the others)",
     {"ms": 100}, {"every": 5}, {"priority": 10}),
    ("demo", "long", "demo.sleep 45 s every 60 s, progress in % while it runs",
     {"ms": 45000}, {"every": 60}, {"ttr": 20}),
    ("acme", "report", "another client: demo.sleep 2 s every 30 s; acme sees only this",
     {"ms": 2000}, {"every": 30}, {}),
)  # fmt: skip


def demo_tasks(now_stamp: str) -> list[Task]:
    return [
        Task(
            _id=task_id(client, slug),
            client=client,
            slug=slug,
            kind="demo.sleep",
            input=data,
            schedule=schedule,
            created_at=now_stamp,
            updated_at=now_stamp,
            **options,
        )
        for client, slug, _what, data, schedule, options in DEMO_TASKS
    ]


def prepare(admin: Couch, db: str, *, users: bool = True) -> list[str]:
    report, _ = provision.init(admin, db, now=admin.now(), hub_user="")
    if not users:
        return report.lines  # the standby gets them by replication
    # The demo's users get known passwords, so that the printed credentials always work.
    provision.add_user(admin, "hub", [ADMIN_ROLE], PASSWORDS["hub"], replace=True)
    provision.add_user(admin, "demo-worker", [WORKER_ROLE], PASSWORDS["demo-worker"], replace=True)
    for client in ("demo", "acme"):
        role = [CLIENT_ROLE_PREFIX + client]
        provision.add_user(admin, client, role, PASSWORDS[client], replace=True)
    return report.lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub.demo", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=0, help="stop after this long (0: run until Ctrl-C)"
    )
    parser.add_argument("--fresh", action="store_true", help="delete the demo data first")
    parser.add_argument("--db", default="farm")
    parser.add_argument("--portal-port", type=int, default=8080)
    args = parser.parse_args(argv)
    if args.fresh and DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)

    primary_url, primary = _server("primary", "COUCHDB_URL", 15984)
    standby_url, standby = _server("standby", "COUCHDB_STANDBY_URL", 15985)
    admin_user = os.environ.get("COUCHDB_USER", "admin")
    admin_password = os.environ.get("COUCHDB_PASSWORD", ADMIN_PASSWORD)
    children: list[subprocess.Popen[bytes]] = []
    hub_env: dict[str, str] = {}
    try:
        for url in (primary_url, standby_url):
            admin = Couch(url, admin_user, admin_password)
            for line in prepare(admin, args.db, users=url == primary_url):
                print(f"[init {url}] {line}")
        from hub import replication

        ends = [
            replication.Endpoint(url, admin_user, admin_password, side)
            for url, side in ((primary_url, "primary"), (standby_url, "standby"))
        ]
        for line in replication.copy_users(ends[0], ends[1]):
            print(f"[replication] {line}")
        for line in replication.setup(ends[0], ends[1], args.db):
            print(f"[replication] {line}")
        hub = Couch(primary_url, "hub", PASSWORDS["hub"])
        now = hub.now()
        for task, (*_, what, _data, _schedule, _options) in zip(
            demo_tasks(to_wire(now)), DEMO_TASKS, strict=True
        ):
            try:
                hub.put(args.db, task.to_doc())
                print(f"[demo] created {task.id}: {what}")
            except Conflict:
                print(f"[demo] {task.id} exists: {what}")
        logs = DEMO_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        hub_env = {
            **os.environ,
            "COUCHFARM_URL": f"{primary_url},{standby_url}",
            "COUCHFARM_USER": "hub",
            "COUCHFARM_PASSWORD": PASSWORDS["hub"],
            "COUCHFARM_DB": args.db,
        }
        # The hub gets the server admin too, as in production: it then keeps each month's
        # results database and its replications on both servers.
        admin_file = _secret_file(DEMO_DIR / "admin.password", admin_password)
        children.append(
            _spawn(
                "hub-serve",
                [
                    sys.executable,
                    "-m",
                    "hub.cli",
                    "serve",
                    "--portal-port",
                    str(args.portal_port),
                    "--admin-user",
                    admin_user,
                    "--admin-password-file",
                    str(admin_file),
                ],
                hub_env,
            )
        )
        password_file = _secret_file(DEMO_DIR / "demo-worker.password", PASSWORDS["demo-worker"])
        worker_env = {k: v for k, v in os.environ.items() if not k.startswith("COUCHFARM_")}
        children.append(
            _spawn(
                "demo-worker",
                [
                    sys.executable,
                    "-m",
                    "desktop_worker.cli",
                    "--headless",
                    "--hub",
                    f"{primary_url},{standby_url}",
                    "--name",
                    "demo-worker",
                    "--password-file",
                    str(password_file),
                    "--db",
                    args.db,
                    "--slots",
                    "2",
                    "--spool",
                    str(DEMO_DIR / "demo-worker-spool.sqlite"),
                ],
                worker_env,
            )
        )
        print(
            _where(primary_url, standby_url, args.db, admin_user, admin_password, args.portal_port)
        )
        print(f"  logs              {logs}/")
        sys.stdout.flush()
        time.sleep(min(args.seconds or 12.0, 12.0))
        _print_stats(hub_env, "after 12 s")
        deadline = time.monotonic() + args.seconds if args.seconds else None
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while deadline is None or time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, (deadline or 1e18) - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        if hub_env and any(child.poll() is None for child in children):
            _print_stats(hub_env, "at the end")
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        for dev in (primary, standby):
            if dev:
                dev.stop()
        print("[demo] stopped")
    return 0


def _secret_file(path: Path, secret: str) -> Path:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(secret)
    return path


def _print_stats(hub_env: dict[str, str], when: str) -> None:
    try:
        stats = subprocess.run(
            [sys.executable, "-m", "hub.cli", "stats"],
            env=hub_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        print(f"[demo] hub stats {when}:\n" + stats.stdout + stats.stderr)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"[demo] hub stats {when}: not available ({exc})")
    sys.stdout.flush()


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log_file = (DEMO_DIR / "logs" / f"{name}.log").open("ab")
    child = subprocess.Popen(
        argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT
    )
    log_file.close()
    print(f"[demo] started {name} (pid {child.pid})")
    return child


def _where(
    primary: str, standby: str, db: str, admin_user: str, admin_password: str, portal_port: int
) -> str:
    return f"""
Couchfarm demo is running. Ctrl-C stops it.

  CouchDB primary   {primary}   (Fauxton: {primary}/_utils)
  CouchDB standby   {standby}   (Fauxton: {standby}/_utils)
  live database     {db}        results: {db}_results_YYYY_MM
  server admin      {admin_user} / {admin_password}
  hub service user  hub / {PASSWORDS["hub"]}          (role farm_admin)
  demo worker       demo-worker / {PASSWORDS["demo-worker"]}  (role farm_worker)
  clients           demo / {PASSWORDS["demo"]}, acme / {PASSWORDS["acme"]}  (portal logins)
"""


if __name__ == "__main__":
    sys.exit(main())
