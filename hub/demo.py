"""``make demo``: the whole system on this machine, and where to find each part.

Starts a primary and a standby PouchDB Server (or uses ``COUCHDB_URL`` /
``COUCHDB_STANDBY_URL``), runs ``hub init`` on both, creates a demo client, a demo
worker and demo tasks for two clients, starts ``hub serve`` (with the portal) and a
headless worker, prints every address and login, and runs until Ctrl-C, SIGTERM or SIGHUP
(or ``--seconds``). However it is stopped, it prints the final stats, stops every process
it started, and says "[demo] stopped"; what cannot reach the terminal any more (Ctrl-C
through ``| tee`` kills tee too) is still written to ``var/demo/logs/demo.log``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

import psutil

from hub import provision
from hub.devserver import REPO_ROOT, DevServer, free_port
from hub.protocol.couch import Conflict, Couch
from hub.protocol.model import Schedule, Task, task_id
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


PRIMARY_PORT = 15984
STANDBY_PORT = 15985
PORTAL_PORT = 8080
# The demo's own account of a run: everything it prints, also when the terminal is gone.
DEMO_LOG = DEMO_DIR / "logs" / "demo.log"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A drained worker finishes its runs (the demo's "long" task takes 45 s): this long, then
# a second signal makes it hand its leases back at once.
WORKER_DRAIN_S = 5.0
STOP_WAIT_S = 15.0


class Stopped(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived: stop the demo (raised in the main thread)."""


class Console:
    """Prints to stdout and to ``DEMO_LOG``; once stdout is gone (a closed pipe, a closed
    terminal) it tries the controlling terminal, and the log file always gets every line."""

    def __init__(self, log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("a", encoding="utf-8")
        self._out: TextIO | None = sys.stdout
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            self._log.write(text + "\n")
            self._log.flush()
            while self._out is not None:
                try:
                    self._out.write(text + "\n")
                    self._out.flush()
                    return
                except (OSError, ValueError):
                    if self._out is sys.stdout:
                        # Nothing more can go there; nor should the flush at exit try.
                        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
                        self._out = _terminal()
                    else:
                        self._out = None

    def close(self) -> None:
        self._log.close()


def _terminal() -> TextIO | None:
    try:
        # Kept open: every later line of the demo goes there.
        return open("/dev/tty", "w", encoding="utf-8")
    except OSError:
        return None


def port_or_free(preferred: int) -> int:
    """The demo's usual port unless something listens on it, so URLs stay the same from run
    to run. SO_REUSEADDR as the servers themselves bind: without it the connections of the
    previous run, in TIME_WAIT for a minute, made the port look taken."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
            schedule=Schedule.model_validate(schedule),
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
    parser.add_argument("--db", default="farm", help="live database name (default farm)")
    parser.add_argument(
        "--dir", type=Path, default=DEMO_DIR, help="data and logs (default var/demo)"
    )
    parser.add_argument(
        "--primary-port",
        type=int,
        default=PRIMARY_PORT,
        help=f"the primary PouchDB Server's port (default {PRIMARY_PORT})",
    )
    parser.add_argument(
        "--standby-port",
        type=int,
        default=STANDBY_PORT,
        help=f"the standby PouchDB Server's port (default {STANDBY_PORT})",
    )
    parser.add_argument(
        "--portal-port",
        type=int,
        default=PORTAL_PORT,
        help=f"the portal's port (default {PORTAL_PORT}; -1: no portal)",
    )
    args = parser.parse_args(argv)
    demo_dir: Path = args.dir.resolve()
    if args.fresh and demo_dir.exists():
        shutil.rmtree(demo_dir)
    console = Console(demo_dir / "logs" / DEMO_LOG.name)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            return  # already stopping: the cleanup below runs to its end
        stopping.set()
        raise Stopped(signal.Signals(signum).name)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    servers: list[DevServer] = []
    children: list[subprocess.Popen[bytes]] = []
    hub_env: dict[str, str] = {}
    why = f"--seconds {args.seconds:g} elapsed"
    try:
        _run(args, demo_dir, console, servers, children, hub_env)
    except (Stopped, KeyboardInterrupt) as exc:
        why = str(exc) or "Ctrl-C"
    finally:
        stopping.set()
        console.say(f"[demo] stopping ({why})")
        _shutdown(console, hub_env, children, servers)
        console.say("[demo] stopped")
        console.close()
    return 0


def _run(
    args: argparse.Namespace,
    demo_dir: Path,
    console: Console,
    servers: list[DevServer],
    children: list[subprocess.Popen[bytes]],
    hub_env: dict[str, str],
) -> None:
    """Start everything, then wait. What it started goes into ``servers`` and ``children``,
    and the hub's environment into ``hub_env``, as it goes: a signal may end it anywhere."""
    say = console.say
    primary_url = _server(demo_dir, "primary", "COUCHDB_URL", args.primary_port, say, servers)
    standby_url = _server(demo_dir, "standby", "COUCHDB_STANDBY_URL", args.standby_port, say,
                          servers)  # fmt: skip
    admin_user = os.environ.get("COUCHDB_USER", "admin")
    admin_password = os.environ.get("COUCHDB_PASSWORD", ADMIN_PASSWORD)
    for url in (primary_url, standby_url):
        admin = Couch(url, admin_user, admin_password)
        for line in prepare(admin, args.db, users=url == primary_url):
            say(f"[init {url}] {line}")
    from hub import replication

    ends = [
        replication.Endpoint(url, admin_user, admin_password, side)
        for url, side in ((primary_url, "primary"), (standby_url, "standby"))
    ]
    for line in replication.copy_users(ends[0], ends[1]):
        say(f"[replication] {line}")
    for line in replication.setup(ends[0], ends[1], args.db):
        say(f"[replication] {line}")
    hub = Couch(primary_url, "hub", PASSWORDS["hub"])
    now = hub.now()
    for task, (*_, what, _data, _schedule, _options) in zip(
        demo_tasks(to_wire(now)), DEMO_TASKS, strict=True
    ):
        try:
            hub.put(args.db, task.to_doc())
            say(f"[demo] created {task.id}: {what}")
        except Conflict:
            say(f"[demo] {task.id} exists: {what}")
    logs = demo_dir / "logs"
    urls = f"{primary_url},{standby_url}"
    hub_env |= {
        **os.environ,
        "COUCHFARM_URL": urls,
        "COUCHFARM_USER": "hub",
        "COUCHFARM_PASSWORD": PASSWORDS["hub"],
        "COUCHFARM_DB": args.db,
        # `hub stats` reads the replications' own states with the server admin.
        "COUCHDB_USER": admin_user,
        "COUCHDB_PASSWORD": admin_password,
    }
    # The hub gets the server admin too, as in production: it then keeps each month's
    # results database and its replications on both servers.
    admin_file = _secret_file(demo_dir / "admin.password", admin_password)
    if args.portal_port >= 0:
        wanted, args.portal_port = args.portal_port, port_or_free(args.portal_port)
        if args.portal_port != wanted:
            say(f"[demo] port {wanted} is taken: the portal listens on {args.portal_port}")
    serve = [sys.executable, "-m", "hub.cli", "serve", "--portal-port", str(args.portal_port),
             "--admin-user", admin_user, "--admin-password-file", str(admin_file)]  # fmt: skip
    _spawn(logs, "hub-serve", serve, hub_env, children, say)
    password_file = _secret_file(demo_dir / "demo-worker.password", PASSWORDS["demo-worker"])
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("COUCHFARM_")}
    # `-m desktop_worker`, not `-m desktop_worker.cli`: see desktop_worker/__main__.py.
    worker = [sys.executable, "-m", "desktop_worker", "--headless", "--hub", urls,
              "--name", "demo-worker", "--password-file", str(password_file), "--db", args.db,
              "--slots", "2", "--spool", str(demo_dir / "demo-worker-spool.sqlite")]  # fmt: skip
    _spawn(logs, "demo-worker", worker, worker_env, children, say)
    say(
        where(
            primary_url,
            standby_url,
            args.db,
            admin_user,
            admin_password,
            args.portal_port,
            logs,
            dev=bool(servers),
        )
    )
    first_stats = min(args.seconds or 12.0, 12.0)
    time.sleep(first_stats)
    reported: set[int] = set()
    _report_exits(children, logs, reported, say)
    _print_stats(console, hub_env, f"after {first_stats:g} s")
    deadline = time.monotonic() + args.seconds if args.seconds else None
    while deadline is None or time.monotonic() < deadline:
        _report_exits(children, logs, reported, say)
        time.sleep(min(1.0, max(0.0, (deadline or 1e18) - time.monotonic())))


def _report_exits(
    children: list[subprocess.Popen[bytes]],
    logs: Path,
    reported: set[int],
    say: Callable[[str], None],
) -> None:
    """A part of the demo that died says so at once, and where its log is."""
    for child, name in zip(children, ("hub-serve", "demo-worker"), strict=False):
        if child.pid not in reported and child.poll() is not None:
            reported.add(child.pid)
            say(f"[demo] {name} exited with code {child.returncode}: see {logs / name}.log")


def _server(
    demo_dir: Path, role: str, env_var: str, port: int, say: Callable[[str], None],
    servers: list[DevServer],
) -> str:  # fmt: skip
    url = os.environ.get(env_var)
    if url:
        return url.rstrip("/")
    chosen = port_or_free(port)
    if chosen != port:
        say(f"[demo] port {port} is taken (another demo still running?): the {role} uses {chosen}")
    dev = DevServer(demo_dir / role, port=chosen, admin_password=ADMIN_PASSWORD)
    servers.append(dev)  # before it starts, so that a signal during the start still stops it
    dev.start()
    return dev.url


def _shutdown(
    console: Console,
    hub_env: dict[str, str],
    children: list[subprocess.Popen[bytes]],
    servers: list[DevServer],
) -> None:
    """Final stats, then every process the demo started, its grandchildren too (the
    worker's forkserver and runs), whatever state the start-up had reached."""
    started = _descendants()
    if hub_env:
        _print_stats(console, hub_env, "at the end")
    for child in children:
        _signal(child, signal.SIGTERM)  # hub: stop; worker: drain
    _wait_all(children, WORKER_DRAIN_S)
    for child in children:
        _signal(child, signal.SIGTERM)  # worker: a second signal hands its leases back
    _wait_all(children, STOP_WAIT_S)
    for child in children:
        if child.poll() is None:
            console.say(f"[demo] pid {child.pid} did not stop: killed")
            _kill_group(child.pid)
            child.wait(STOP_WAIT_S)
    for dev in servers:
        try:
            dev.stop()
        except (OSError, subprocess.SubprocessError) as exc:
            console.say(f"[demo] PouchDB Server {dev.url} did not stop cleanly: {exc}")
    leftovers = [proc for proc in {*started, *_descendants()} if proc.is_running()]
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(leftovers, timeout=STOP_WAIT_S)


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _signal(child: subprocess.Popen[bytes], signum: int) -> None:
    if child.poll() is None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass


def _wait_all(children: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _secret_file(path: Path, secret: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(secret)
    return path


def _print_stats(console: Console, hub_env: dict[str, str], when: str) -> None:
    try:
        stats = subprocess.run(
            [sys.executable, "-m", "hub.cli", "stats"],
            env=hub_env, capture_output=True, text=True, timeout=30, start_new_session=True,
        )  # fmt: skip
        console.say(f"[demo] hub stats {when}:\n" + stats.stdout + stats.stderr)
    except (OSError, subprocess.SubprocessError) as exc:
        console.say(f"[demo] hub stats {when}: not available ({exc})")


def _spawn(
    logs: Path,
    name: str,
    argv: list[str],
    env: dict[str, str],
    children: list[subprocess.Popen[bytes]],
    say: Callable[[str], None],
) -> None:
    """Start a child in its own session: Ctrl-C at the terminal reaches only the demo,
    which prints the final stats while the hub still runs, then stops it."""
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.log").open("ab") as log_file:
        children.append(
            subprocess.Popen(
                argv,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        )
    say(f"[demo] started {name} (pid {children[-1].pid})")


def _shown(path: Path) -> str:
    """A path as the user would type it: relative when under the current directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def where(
    primary: str,
    standby: str,
    db: str,
    admin_user: str,
    admin_password: str,
    portal_port: int,
    logs: Path,
    *,
    dev: bool = True,
) -> str:
    """The summary: every address and login, and the lines to paste to use the CLI."""
    portal = f"http://127.0.0.1:{portal_port}/" if portal_port >= 0 else "(off: --portal-port -1)"
    fauxton = (
        'PouchDB Server\'s old "Fauxton on express-pouchdb": for browsing documents.\n'
        "                    On CouchDB 3 (production) /_utils is the current Fauxton: "
        "replication,\n                    _scheduler jobs, _users, configuration."
        if dev
        else "the server's own Fauxton"
    )
    hub_pw = PASSWORDS["hub"]
    return f"""
Couchfarm demo is running. Ctrl-C stops it (final stats, then every process).

  portal            {portal}
    client logins   demo / {PASSWORDS["demo"]}, acme / {PASSWORDS["acme"]}  (own tasks only)
    operator login  hub / {hub_pw}  (the hub user, role farm_admin: every client, /ops)
  CouchDB primary   {primary}   Fauxton: {primary}/_utils
  CouchDB standby   {standby}   Fauxton: {standby}/_utils
    Fauxton         {fauxton}
    server admin    {admin_user} / {admin_password}  (Fauxton login; hub init, client add)
  live database     {db}   results: {db}_results_YYYY_MM
  hub user          hub / {hub_pw}  (the hub service, the hub command, the portal's operator)
  demo worker       demo-worker / {PASSWORDS["demo-worker"]}  (role farm_worker)
  logs              {_shown(logs)}/  (and demo.log: all of the above)

The hub command is .venv/bin/hub (or `source .venv/bin/activate`). Paste into a shell:

  export COUCHFARM_URL={primary},{standby} COUCHFARM_USER=hub COUCHFARM_PASSWORD={hub_pw}
  # the server admin, for hub client add, hub replication status and the state in hub stats:
  export COUCHDB_USER={admin_user} COUCHDB_PASSWORD={admin_password}
  .venv/bin/hub stats
  .venv/bin/hub task list
  .venv/bin/hub task show task:demo:heartbeat
"""


if __name__ == "__main__":
    sys.exit(main())
