"""The hub command: set up the farm, manage users and tasks, run the hub service."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hub import provision
from hub.protocol.couch import Couch, CouchError
from hub.protocol.kinds import KIND_SCHEMAS
from hub.protocol.model import Overlap, Task
from hub.protocol.names import CLIENT_ROLE_PREFIX, WORKER_ROLE, is_results_db
from hub.protocol.timefmt import from_wire
from hub.protocol.version import __version__
from hub.settings import Connection, SettingsError, connection, read_password_file

if TYPE_CHECKING:
    from hub.service import FarmService
    from hub.tallies import TallyChange

Handler = Callable[[argparse.Namespace], int]

ENVIRONMENT = """\
where CouchDB is (flags win over the environment):
  COUCHFARM_URL            CouchDB URL(s), primary first: http://host:5984[,http://standby:5984]
  COUCHFARM_USER           the CouchDB user, usually the hub user (role farm_admin)
  COUCHFARM_PASSWORD       its password (or COUCHFARM_PASSWORD_FILE: a file holding it)
  COUCHFARM_DB             the live database (default farm)
  COUCHDB_USER, COUCHDB_PASSWORD
                           a server admin, for init, worker/client add, replication,
                           recover, and the replication state in stats

`make demo` prints these for the demo. The command is .venv/bin/hub in a checkout
(`source .venv/bin/activate` puts it on PATH)."""


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="CouchDB URL(s), primary first, comma-separated (default: $COUCHFARM_URL)"
    )
    parser.add_argument("--user", help="CouchDB user name (default: $COUCHFARM_USER)")
    parser.add_argument(
        "--password-file",
        help="file holding the CouchDB password (default: $COUCHFARM_PASSWORD_FILE, "
        "or the password in $COUCHFARM_PASSWORD)",
    )
    parser.add_argument("--db", help="live database name (default: $COUCHFARM_DB, or farm)")


def missing_credentials(args: argparse.Namespace, *, admin: bool = False) -> list[str]:
    """What the connection lacks for CouchDB to know who asks, as settings to set."""
    try:
        conn = _conn(args, admin=admin)
    except SettingsError:
        return []
    missing = []
    if not conn.user:
        missing.append("no user (set COUCHFARM_USER, or pass --user)")
    if not conn.password:
        missing.append(
            "no password (set COUCHFARM_PASSWORD or COUCHFARM_PASSWORD_FILE, or pass "
            "--password-file)"
        )
    return missing


def _conn(args: argparse.Namespace, *, admin: bool = False) -> Connection:
    return connection(args.url, args.user, args.password_file, args.db, admin=admin)


def _password(args: argparse.Namespace) -> str | None:
    if getattr(args, "password_from", None):
        return read_password_file(args.password_from)
    return getattr(args, "password", None)


# ---------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> int:
    conn = _conn(args, admin=True)
    couch = conn.couch()
    couch.session()  # fail early, with a clear message, on a wrong password
    report, generated = provision.init(
        couch, conn.db, now=couch.now(), hub_user=args.hub_user, hub_password=_password(args)
    )
    for line in report.lines:
        print(line)
    print(f"{report.changes} change(s)")
    if generated:
        print(f"hub user {args.hub_user!r} password (shown once): {generated}")
    if args.standby:
        from hub import replication

        standby_couch = Couch(args.standby, conn.user, conn.password)
        report, _ = provision.init(standby_couch, conn.db, now=standby_couch.now(), hub_user="")
        for line in report.lines:
            print(f"[standby] {line}")
        primary = replication.Endpoint(
            conn.urls[0], conn.user or "", conn.password or "", "primary"
        )
        standby = replication.Endpoint(
            args.standby, conn.user or "", conn.password or "", "standby"
        )
        for line in replication.setup(primary, standby, conn.db):
            print(line)
    return 0


def _cmd_add_user(role_of: Callable[[str], list[str]], what: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        couch = _conn(args, admin=True).couch()
        _created, generated = provision.add_user(
            couch, args.name, role_of(args.name), _password(args), replace=args.reset
        )
        print(f"{what} {args.name}: roles {role_of(args.name)}")
        if generated:
            print(f"password (shown once): {generated}")
        return 0

    return run


def cmd_devserver(args: argparse.Namespace) -> int:
    from hub.devserver import DevServer

    server = DevServer(Path(args.dir), port=args.port, admin_password=args.admin_password)
    server.start()
    print(json.dumps({"url": server.url, "admin": server.admin_user, "dir": str(server.data_dir)}))
    sys.stdout.flush()
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _service(args: argparse.Namespace) -> FarmService:
    from hub.service import FarmService

    conn = _conn(args)
    return FarmService(conn.couch(), conn.db, min_interval=getattr(args, "min_interval", 10))


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _task_spec(args: argparse.Namespace) -> dict:
    spec: dict = {"kind": args.kind}
    try:
        spec["input"] = json.loads(args.input) if args.input else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--input is not valid JSON: {exc}") from None
    schedule = {
        key: value
        for key, value in (
            ("every", args.every),
            ("cron", args.cron),
            ("at", args.at),
            ("start", args.start),
            ("end", args.end),
            ("tz", args.tz),
            ("jitter", args.jitter),
        )
        if value is not None
    }
    if args.exclude:
        from hub.schedules import ExclusionTextError, parse_exclusions

        try:
            schedule["exclusions"] = parse_exclusions("\n".join(args.exclude))
        except ExclusionTextError as exc:
            raise ValueError(f"--exclude: {exc}") from None
    spec["schedule"] = schedule
    for key in (
        "priority",
        "tube",
        "ttr",
        "max_attempts",
        "overlap",
        "misfire",
        "misfire_grace",
        "max_runs",
        "pause_after_failures",
        "alert_after_failures",
        "alert_channels",
    ):
        value = getattr(args, key)
        if value is not None:
            spec[key] = value
    return spec


def task_ref(client: str | None, name: str) -> tuple[str | None, str]:
    """(client, slug or id) from what the user typed: ``task:CLIENT:SLUG`` as ``task list``
    prints it, or ``--client CLIENT SLUG``."""
    if name.startswith("task:"):
        parts = name.split(":")
        if len(parts) != 3 or not all(parts[1:]):
            raise ValueError(f"{name!r} is not a task id: give task:CLIENT:SLUG")
        if client is not None and client != parts[1]:
            raise ValueError(f"task {name} belongs to client {parts[1]!r}, not {client!r}")
        return parts[1], name
    if client is None:
        raise ValueError(
            f"which client's task {name!r}? Give the id that `hub task list` prints "
            f"(task:CLIENT:{name}), or --client CLIENT {name}"
        )
    return client, name


def check_client(service: FarmService, conn: Connection, client: str) -> None:
    """Refuse a task for a client that does not exist. Only a server admin may read other
    users' documents in ``_users`` (CouchDB answers 404 to anyone else, PouchDB Server 500),
    so the lookup uses COUCHDB_USER/COUCHDB_PASSWORD when they are set; without them a
    client is known when it already has tasks, or when ``--new-client`` says so."""
    from hub.protocol.couch import CouchError, NotFound

    readers = [service.couch]
    admin_user, admin_password = os.environ.get("COUCHDB_USER"), os.environ.get("COUCHDB_PASSWORD")
    if admin_user and admin_password:
        readers.insert(0, Couch(conn.urls, admin_user, admin_password))
    for reader in readers:
        try:
            user = reader.get("_users", provision.user_doc_id(client))
        except NotFound:
            if "_admin" not in reader.session().get("userCtx", {}).get("roles", []):
                continue  # a 404 to anyone but a server admin says nothing
            raise ValueError(
                f"--client {client}: no such client; create it first with `hub client add {client}`"
            ) from None
        except CouchError:
            continue
        roles = user.get("roles", [])
        if CLIENT_ROLE_PREFIX + client not in roles:
            raise ValueError(
                f"--client {client}: user {client!r} is not a client (roles {roles}); "
                f"a client has the role {CLIENT_ROLE_PREFIX}{client}"
            )
        return
    if service.list_tasks(client):
        return
    raise ValueError(
        f"--client {client}: no client of that name has tasks, and only a server admin can "
        "look one up: set COUCHDB_USER and COUCHDB_PASSWORD, or pass --new-client for a "
        f"client just created with `hub client add {client}`"
    )


def _rule(task: Task) -> str:
    schedule = task.schedule
    return (schedule.every and f"every {schedule.every}s") or (schedule.cron or f"at {schedule.at}")


def describe_task(task: Task, recent: list[dict]) -> list[str]:
    """``task show`` for a person: the task's settings, then its latest occurrences."""
    schedule = {
        k: v
        for k, v in task.schedule.model_dump(by_alias=True, mode="json").items()
        if v is not None
    }
    if task.max_runs is not None:
        schedule["max_runs"] = task.max_runs
    rows = [
        ("task", task.id),
        ("state", task.status + (f" ({task.paused_reason})" if task.paused_reason else "")),
        ("kind", task.kind),
        ("input", json.dumps(task.input, sort_keys=True)),
        (
            "schedule",
            ", ".join(
                f"{k} {v}{'s' if k in ('every', 'jitter') else ''}" for k, v in schedule.items()
            ),
        ),
        ("tube", task.tube),
        ("priority", str(task.priority)),
        ("ttr", f"{task.ttr} s"),
        ("max attempts", str(task.max_attempts)),
        ("overlap", task.overlap),
        ("misfire", f"{task.misfire} (grace {task.misfire_grace} s)"),
        ("created", task.created_at),
        ("updated", task.updated_at),
    ]
    lines = [f"{label:<13} {value}" for label, value in rows]
    lines.append("")
    if not recent:
        lines.append("no occurrences in the live database yet")
        return lines
    lines.append(f"latest {len(recent)} occurrence(s) in the live database:")
    lines.append(f"  {'DUE':<24} {'STATE':<9} {'ATTEMPT':>7}  {'WORKER':<16} RESULT")
    for occ in recent:
        result = occ.get("result") or {}
        worker = result.get("worker") or (occ.get("lease") or {}).get("worker") or "-"
        outcome = "-"
        if result:
            outcome = str(result.get("status") or "-")
            if result.get("started_at") and result.get("finished_at"):
                took = from_wire(result["finished_at"]) - from_wire(result["started_at"])
                outcome += f" in {took.total_seconds():.2f} s"
        lines.append(
            f"  {occ.get('due_at', '?'):<24} {occ.get('state', '?'):<9} "
            f"{occ.get('attempt', 0):>7}  {worker:<16} {outcome}"
        )
    return lines


def cmd_task(args: argparse.Namespace) -> int:
    from hub.service import ServiceError

    service = _service(args)
    client = args.client
    try:
        if args.action == "add":
            if not args.new_client:
                check_client(service, _conn(args), client)
            task = service.add_task(client, args.name, _task_spec(args))
            print(f"added {task.id}")
        elif args.action == "list":
            for task in service.list_tasks(client):
                state = task.status
                print(
                    f"{task.id}\t{task.kind}\t{_rule(task)}\t{task.tube}\tp{task.priority}\t{state}"
                )
        else:
            client, name = task_ref(client, args.name)
            if args.action == "show":
                task = service.get_task(client, name)
                recent = service.occurrences_of(client, name, 10)
                if args.json:
                    _print_json({"task": task.to_doc(), "recent": recent})
                else:
                    print("\n".join(describe_task(task, recent)))
            elif args.action in ("pause", "resume"):
                task = service.set_paused(client, name, args.action == "pause")
                print(f"{args.action}d {task.id}")
            elif args.action == "run-now":
                occ = service.run_now(client, name)
                print(f"created {occ.id}")
            elif args.action == "delete":
                task = service.get_task(client, name)
                cancelled = service.delete_task(client, name)
                print(f"deleted {task.id}; cancelled {cancelled} live occurrence(s)")
    except ServiceError as exc:
        for problem in exc.problems:
            print(f"hub: {problem}", file=sys.stderr)
        return 2
    return 0


def cmd_kick(args: argparse.Namespace) -> int:
    print(f"kicked {_service(args).kick(args.client, args.task, args.limit)}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    service = _service(args)
    stats = service.stats()
    if args.json:
        _print_json(stats)
        return 0
    print(f"hub time {stats['at']}")
    print("by state:  " + "  ".join(f"{k}={v}" for k, v in sorted(stats["by_state"].items())))
    for tube, counts in sorted(stats["by_tube"].items()):
        paused = " (paused)" if tube in stats["paused_tubes"] else ""
        print(f"tube {tube}{paused}: " + "  ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for client, counts in sorted(stats["by_client"].items()):
        print(f"client {client}: " + "  ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    print(f"workers online: {len(stats['workers_online'])}")
    if stats["workers_online"]:
        # Runs in progress come from the leases: a worker writes its own doc only when its
        # state changes and every 60 s (docs/DECISIONS.md decision 12), so its "current" lags.
        leases = Counter(
            row["value"]
            for row in service.couch.view(service.db, "farm", "leases_by_expiry")["rows"]
        )
        print(f"  {'WORKER':<20} {'STATE':<9} {'VERSION':<8} {'RUNS NOW':>8}  LAST SEEN")
        for worker in stats["workers_online"]:
            print(
                f"  {worker['name']:<20} {worker['state']:<9} {worker['version']:<8} "
                f"{leases[worker['name']]:>8}  {worker['last_seen']}"
            )
    print(f"finished in the last minute: {stats['finished_last_minute']}")
    conn = _conn(args)
    if len(conn.urls) > 1:
        for line in replication_lines(conn):
            print(line)
    return 0


def replication_lines(conn: Connection) -> list[str]:
    """Each replication's state and lag. The state lives in ``_scheduler`` (CouchDB 3) or
    the ``_replicator`` docs (PouchDB Server), which only a server admin may read: it is read
    with COUCHDB_USER/COUCHDB_PASSWORD when they are set, and said to be unreadable if not;
    the lag in seconds comes from the hub's probe in the live database."""
    from hub import replication

    admin_user, admin_password = os.environ.get("COUCHDB_USER"), os.environ.get("COUCHDB_PASSWORD")
    if admin_user and admin_password:
        admin = Couch(conn.urls, admin_user, admin_password)
        readers, as_admin = (admin.for_server(0), admin.for_server(1)), True
    else:
        couch = conn.couch()
        readers, as_admin = (couch.for_server(0), couch.for_server(1)), False
    health = replication.status(*readers, conn.db, admin=as_admin)
    lines = [f"replication  {'DATABASE':<24} {'DIRECTION':<20} {'STATE':<10} {'LAG':>8}  BEHIND"]
    for link in health.links:
        if link.lag_seconds is not None:
            lag = f"{link.lag_seconds:.1f} s"
        else:
            lag = "no probe" if link.db != conn.db else "pending"
        state = link.state if as_admin else "?"
        behind = "-" if link.lag_docs is None else f"{link.lag_docs} doc(s)"
        error = f"  {link.error}" if link.error else ""
        lines.append(
            f"             {link.db:<24} {link.source + ' -> ' + link.target:<20} {state:<10} "
            f"{lag:>8}  {behind}{error}"
        )
    if not as_admin:
        lines.append(
            "             (state ?: only a server admin may read it; "
            "set COUCHDB_USER and COUCHDB_PASSWORD)"
        )
    lines.append(
        "             (lag: age of the hub's probe on the other side; monthly databases "
        "have no probe)"
    )
    return lines


def _endpoints(args: argparse.Namespace, names: tuple[str, str] = ("primary", "standby")):
    from hub.replication import Endpoint

    conn = _conn(args, admin=True)
    if len(conn.urls) != 2:
        raise SettingsError("give both servers: --url PRIMARY_URL,STANDBY_URL (server admins)")
    if not conn.user or not conn.password:
        raise SettingsError("replication needs server-admin credentials (--user, --password-file)")
    return conn, [
        Endpoint(u, conn.user, conn.password, n) for u, n in zip(conn.urls, names, strict=True)
    ]


def cmd_replication(args: argparse.Namespace) -> int:
    from hub import replication

    conn, (primary, standby) = _endpoints(args)
    if args.action == "setup":
        for line in replication.setup(primary, standby, conn.db):
            print(line)
        return 0
    health = replication.status(primary.couch(), standby.couch(), conn.db, admin=True)
    if args.json:
        _print_json(health.as_dict())
        return 0
    for link in health.links:
        lag = "unknown" if link.lag_seconds is None else f"{link.lag_seconds:.1f} s"
        print(
            f"{link.db} {link.source} -> {link.target}: state {link.state}, lag {lag}, "
            f"{link.lag_docs} doc(s) apart{' ERROR ' + link.error if link.error else ''}"
        )
    return 0 if all(link.healthy for link in health.links) else 1


def cmd_recover(args: argparse.Namespace) -> int:
    from hub import replication

    conn = _conn(args, admin=True)
    if not conn.user or not conn.password:
        raise SettingsError("recovery needs server-admin credentials (--user, --password-file)")
    source = replication.Endpoint(args.source, conn.user, conn.password, "standby")
    target = replication.Endpoint(args.target, conn.user, conn.password, "primary")
    report = replication.recover(
        source, target, conn.db, sample=args.sample, converge_timeout=args.timeout
    )
    for line in report.lines:
        print(line)
    if report.ok:
        print("recovery verified: replication runs both ways; clients may fail back")
        return 0
    print("recovery FAILED verification (the new primary stays marked rebuilding):")
    for line in report.failures:
        print(f"  {line}")
    return 1


def cmd_audit(args: argparse.Namespace) -> int:
    from hub import audit

    if bool(args.primary) != bool(args.standby):
        raise SettingsError("give both --primary URL and --standby URL")
    if args.primary:
        args.url = f"{args.primary},{args.standby}"
    conn = _conn(args, admin=True)
    if len(conn.urls) != 2:
        raise SettingsError(
            "give both servers: --primary URL --standby URL (or --url PRIMARY_URL,STANDBY_URL)"
        )
    couch = conn.couch()
    try:
        report = audit.audit(couch.for_server(0), couch.for_server(1), conn.db)
    except audit.AuditError as exc:
        print(f"hub: audit: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(report.as_dict())
    else:
        for line in report.lines():
            print(line)
    return 0 if report.clean else 1


def cmd_occurrence(args: argparse.Namespace) -> int:
    from hub.service import ServiceError

    try:
        _print_json(_service(args).occurrence(None, args.id))
    except ServiceError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    return 0


def _reliability_lines(name: str, doc: dict[str, object] | None) -> list[str]:
    if doc is None:
        return [f"worker        {name}", "reliability   none yet (no quorum result of it compared)"]
    lines = [
        f"worker        {name}",
        f"score         {float(str(doc.get('score', 0.5))):.3f} "
        f"({doc.get('agree', 0)} agree, {doc.get('disagree', 0)} disagree, "
        f"disagree streak {doc.get('disagree_streak', 0)})",
    ]
    if doc.get("quarantined"):
        lines.append(f"quarantined   yes, since {doc.get('quarantined_at') or '?'}")
    else:
        lines.append("quarantined   no")
    lifts = doc.get("lifts")
    for lift in lifts if isinstance(lifts, list) else []:
        if isinstance(lift, dict):
            why = f": {lift['reason']}" if lift.get("reason") else ""
            lines.append(
                f"lifted        {lift.get('at')} by {lift.get('by')} "
                f"(as {lift.get('user') or '?'}; quarantined since "
                f"{lift.get('quarantined_at') or '?'}){why}"
            )
    lines.append(f"updated       {doc.get('updated_at')}")
    return lines


def cmd_worker_reliability(args: argparse.Namespace) -> int:
    from hub.service import ServiceError

    try:
        found = _service(args).worker_reliability(args.name)
    except ServiceError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(found["reliability"])
    else:
        print("\n".join(_reliability_lines(args.name, found["reliability"])))
    return 0


def cmd_worker_lift(args: argparse.Namespace) -> int:
    import getpass

    from hub.service import ServiceError

    by = args.by
    if not by:
        try:
            by = getpass.getuser()
        except (KeyError, OSError):  # no login name (a container without a passwd entry)
            by = "unknown"
    try:
        doc, lifted = _service(args).lift_quarantine(args.name, by, args.reason)
    except ServiceError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    if lifted:
        print(f"{args.name}: quarantine lifted by {by}; it may take quorum-1 work again")
    else:
        lifts = doc.get("lifts") or []
        last = lifts[-1] if isinstance(lifts, list) and lifts else None
        since = f" (last lifted {last.get('at')} by {last.get('by')})" if last else ""
        print(f"{args.name}: not quarantined; nothing to lift{since}")
    return 0


def cmd_tube(args: argparse.Namespace) -> int:
    _service(args).set_tube_paused(args.tube, args.action == "pause")
    print(f"tube {args.tube}: {args.action}d")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from hub.serve import Hub, HubConfig

    conn = _conn(args)
    admin = None
    ends = None
    if args.admin_password_file:
        from hub.protocol.couch import Couch

        admin_password = read_password_file(args.admin_password_file)
        admin = Couch(conn.urls, args.admin_user, admin_password)
        if len(conn.urls) == 2:
            from hub.replication import Endpoint

            primary_url, standby_url = conn.urls
            ends = (Endpoint(primary_url, args.admin_user, admin_password, "primary"),
                    Endpoint(standby_url, args.admin_user, admin_password, "standby"))  # fmt: skip
    from hub.notify import smtp_from_env

    config = HubConfig(
        db=conn.db,
        retention_days=args.retention_days,
        smtp=smtp_from_env(dict(os.environ)),  # alert emails (docs/ALERTS.md)
        alerts_allow_private=os.environ.get("COUCHFARM_ALERTS_ALLOW_PRIVATE", "") == "1",
    )
    hub = Hub(conn.couch(), config, admin=admin, replication_ends=ends)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    hub.start()
    started = time.monotonic()
    portal = None
    if args.portal_port is not None and args.portal_port >= 0:
        try:
            from hub.portal.server import start_portal
        except ImportError:  # installed without the portal extra
            print(
                "hub serve: the portal is not installed (pip install couchfarm[portal])",
                file=sys.stderr,
            )
        else:
            portal = start_portal(hub, args.portal_host, args.portal_port)
    try:
        while not stop.wait(1.0):
            if args.seconds and time.monotonic() - started > args.seconds:
                break
    finally:
        hub.stop()
        if portal is not None:
            portal.stop()
    return 0


MONTH_FORMAT = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def _change_line(change: TallyChange) -> str:
    statuses = sorted(set(change.before) | set(change.after))
    counts = ", ".join(
        f"{s} {change.before.get(s, 0)} -> {change.after.get(s, 0)}" for s in statuses
    )
    extra = f" (conflict: {len(change.deleted)} revision(s) removed)" if change.deleted else ""
    return f"  {change.action} {change.task}: {counts or 'no results'}{extra}"


def cmd_tallies(args: argparse.Namespace) -> int:
    from hub import tallies
    from hub.protocol.couch import Forbidden, NotFound, Unauthorized

    conn = _conn(args)
    couch = conn.couch()
    months: list[str] = []
    for text in args.month or []:
        found = MONTH_FORMAT.match(text)
        if not found:
            raise ValueError(f"--month {text!r} is not a month: give YYYY-MM, e.g. 2026-11")
        months.append(f"{conn.db}_results_{found[1]}_{found[2]}")
    if args.task is not None and (
        not args.task.startswith("task:") or len(args.task.split(":")) != 3
    ):
        raise ValueError(f"--task {args.task!r} is not a task id: give task:CLIENT:SLUG")
    if not months:
        try:
            names = couch.all_dbs()
        except (Unauthorized, Forbidden):
            raise SettingsError(
                "listing the monthly databases needs server-admin rights: pass --month YYYY-MM"
            ) from None
        months = sorted(name for name in names if is_results_db(conn.db, name))
        if not months:
            print(f"no monthly results databases for {conn.db}")
            return 0
    status = 0
    tasks = {args.task} if args.task else None
    for db in dict.fromkeys(months):
        try:
            couch.db_info(db)
        except NotFound:
            print(f"hub: {db}: no such results database (nothing archived that month?)",
                  file=sys.stderr)  # fmt: skip
            status = 1
            continue
        report = tallies.recount_tallies(couch, db, tasks=tasks, dry_run=args.dry_run)
        print(
            f"{db}{' (dry run, nothing written)' if args.dry_run else ''}: "
            f"{len(report.tallies or [])} task(s) recounted from {report.results} result(s); "
            f"changed {len(report.of('changed'))}, created "
            f"{len(report.of('created'))}, unchanged {len(report.of('unchanged'))}"
        )
        if report.recovered:
            print(f"  folded {report.recovered} batch(es) left pending by a dead writer")
        for change in report.tallies or []:
            if change.action != "unchanged":
                print(_change_line(change))
    return status


# ---------------------------------------------------------------- parser


Subcommands = argparse._SubParsersAction  # what add_subparsers returns


def _add_setup_commands(sub: Subcommands) -> None:
    """`hub init` and the worker and client accounts."""
    p = sub.add_parser("init", help="create databases, design docs, security and the hub user")
    _connection_args(p)
    p.add_argument("--hub-user", default="hub", help="service user with role farm_admin")
    p.add_argument("--password-from", help="file with the hub user's password (else generated)")
    p.add_argument("--standby", help="standby URL: init it too and replicate both ways")
    p.set_defaults(func=cmd_init)

    for noun, role_of, what in (
        ("worker", lambda n: [WORKER_ROLE], "worker"),
        ("client", lambda n: [CLIENT_ROLE_PREFIX + n], "client"),
    ):
        text = {"worker": "manage worker accounts; show and lift a worker's quarantine"}
        group = sub.add_parser(noun, help=text.get(noun, f"manage {noun} accounts")).add_subparsers(
            dest="action", required=True
        )
        if noun == "worker":
            _add_worker_reliability_commands(group)
        p = group.add_parser("add", help=f"create a {noun} user")
        _connection_args(p)
        p.add_argument("name", help=f"the {noun}'s user name")
        p.add_argument("--password", help="the password (else a strong one is generated)")
        p.add_argument("--password-from", help="read the password from this file")
        p.add_argument("--reset", action="store_true", help="set a new password if it exists")
        p.set_defaults(func=_cmd_add_user(role_of, what))


def _add_worker_reliability_commands(group: Subcommands) -> None:
    """`hub worker reliability` and `hub worker lift-quarantine` (decision 17)."""
    p = group.add_parser(
        "reliability",
        help="a worker's reliability: agreements, disagreements, score, quarantine, lifts",
    )
    _connection_args(p)
    p.add_argument("name", help="the worker's user name")
    p.add_argument("--json", action="store_true", help="the reliability document as JSON")
    p.set_defaults(func=cmd_worker_reliability)
    p = group.add_parser(
        "lift-quarantine",
        help="let a quarantined worker take work nobody checks again (recorded in its "
        "reliability document; lifting twice changes nothing)",
    )
    _connection_args(p)
    p.add_argument("name", help="the worker's user name")
    p.add_argument("--by", help="who lifts it, recorded with the lift (default: your login name)")
    p.add_argument("--reason", help="why, recorded with the lift")
    p.set_defaults(func=cmd_worker_lift)


def _add_serve_command(sub: Subcommands) -> None:
    """`hub serve`: the hub service and its portal."""
    p = sub.add_parser("serve", help="run the hub service (and the portal)")
    _connection_args(p)
    p.add_argument("--admin-user", default="admin", help="server admin, for monthly databases")
    p.add_argument(
        "--admin-password-file",
        help="server admin password file: monthly databases created and dropped on every "
        "server, and their replications kept (without it: the hub only warns)",
    )
    p.add_argument(
        "--retention-days",
        type=int,
        default=90,
        help="monthly results databases older than this are dropped (default 90)",
    )
    p.add_argument(
        "--portal-host", default="127.0.0.1", help="the portal's address (default 127.0.0.1)"
    )
    p.add_argument(
        "--portal-port", type=int, default=8080, help="the portal's port (default 8080; -1: none)"
    )
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (testing)")
    p.set_defaults(func=cmd_serve)


def _add_task_commands(sub: Subcommands) -> None:
    """`hub task ...`: what clients order."""
    task = sub.add_parser("task", help="add, list, show and steer tasks").add_subparsers(
        dest="action", required=True
    )
    kinds = ", ".join(sorted(KIND_SCHEMAS))
    p = task.add_parser(
        "add",
        help="add a recurring task",
        description=f"Add a recurring task. Kinds: {kinds} (and installed plugins).",
    )
    _connection_args(p)
    p.add_argument("--client", required=True, help="the client (user) the task belongs to")
    p.add_argument(
        "--new-client",
        action="store_true",
        help="the client was just created and has no tasks yet (only a server admin can "
        "look a client up; without this, a client with no tasks is refused)",
    )
    p.add_argument("--name", required=True, help="task slug, unique per client")
    p.add_argument("--kind", required=True, help=f"what the worker runs: {kinds}")
    p.add_argument("--input", default="{}", help="the kind's input as JSON (default {})")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--every", type=int, help="seconds between runs")
    rule.add_argument("--cron", help="cron expression, 5 fields, e.g. '*/5 * * * *'")
    rule.add_argument("--at", help="one-off time, ISO-8601 with zone")
    p.add_argument("--start", help="first run not before this time (ISO-8601 with zone)")
    p.add_argument("--end", help="no runs after this time (ISO-8601 with zone)")
    p.add_argument("--tz", help="time zone for --cron, e.g. Europe/Amsterdam (default UTC)")
    p.add_argument("--jitter", type=int, help="spread each run by up to this many seconds")
    p.add_argument(
        "--exclude",
        action="append",
        metavar="WINDOW",
        help="no run is due inside this window, in --tz; repeatable. '02:00-03:30' every "
        "night, '23:00-01:00 sat,sun' on those days (to before from crosses midnight), "
        "'2026-12-24T00:00 .. 2026-12-27T00:00' once; '# note' at the end. Runs inside are "
        "skipped, not missed (docs/SCHEDULES.md)",
    )
    p.add_argument(
        "--max-runs",
        type=int,
        help="end the task after this many runs, counted from --start (else from now); "
        "it then shows as ended, with the reason",
    )
    p.add_argument(
        "--pause-after-failures",
        type=int,
        help="pause the task after this many failed runs in a row",
    )
    p.add_argument(
        "--alert-after-failures",
        type=int,
        help="alert the client after this many failed runs in a row, and again when a run "
        "succeeds (docs/ALERTS.md); channels are the client's alert settings",
    )
    p.add_argument(
        "--alert-channel",
        dest="alert_channels",
        action="append",
        choices=["webhook", "email"],
        help="alert only through this channel; repeatable (default: every channel the "
        "client has set up)",
    )
    p.add_argument(
        "--priority", type=int, help="0 (first) to 2^32-1; default 1024 runs at its due time"
    )
    p.add_argument("--tube", help="named queue; workers choose tubes (default: default)")
    p.add_argument(
        "--ttr", type=int, help="time to run: seconds a lease lasts without a touch (default 60)"
    )
    p.add_argument("--max-attempts", type=int, help="attempts before a run is buried (default 3)")
    p.add_argument(
        "--overlap",
        choices=[o.value for o in Overlap],
        help="when a run is due while the last one is active (default skip; "
        "docs/SCHEDULES.md maps each to Temporal's policies)",
    )
    p.add_argument(
        "--misfire",
        choices=["run_all", "run_latest", "skip"],
        help="runs the hub missed while down (default run_latest)",
    )
    p.add_argument(
        "--misfire-grace", type=int, help="seconds late a run may still start (default 60)"
    )
    p.add_argument("--min-interval", type=int, default=10, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_task)
    p = task.add_parser("list", help="list tasks (id, kind, schedule, tube, priority, state)")
    _connection_args(p)
    p.add_argument("--client", help="only this client's tasks")
    p.set_defaults(func=cmd_task)
    for action, text in (
        ("show", "a task's settings and its latest occurrences"),
        ("pause", "pause a task: no new runs until resumed"),
        ("resume", "resume a paused task"),
        ("run-now", "an extra run, due now"),
        ("delete", "delete a task and cancel its live occurrences"),
    ):
        p = task.add_parser(action, help=text, description=text)
        _connection_args(p)
        p.add_argument("--client", help="the task's client (not needed with a task id)")
        p.add_argument(
            "name", help="the task id as `task list` prints it (task:CLIENT:SLUG), or its slug"
        )
        if action == "show":
            p.add_argument("--json", action="store_true", help="the raw documents, as JSON")
        p.set_defaults(func=cmd_task)


def _add_ops_commands(sub: Subcommands) -> None:
    """What operators run: occurrences, tubes, replication, recovery, tallies."""
    p = sub.add_parser("kick", help="buried occurrences back to ready")
    _connection_args(p)
    p.add_argument("--client", help="only this client's occurrences")
    p.add_argument("--task", help="task slug (with --client)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    p.set_defaults(func=cmd_kick)

    p = sub.add_parser("stats", help="counts by state, tube and client; workers online")
    _connection_args(p)
    p.add_argument("--json", action="store_true", help="the counts as JSON, for scripts")
    p.set_defaults(func=cmd_stats)

    occ = sub.add_parser("occurrence", help="inspect occurrences").add_subparsers(
        dest="action", required=True
    )
    p = occ.add_parser("show", help="state, attempts, lease, progress, errors and result")
    _connection_args(p)
    p.add_argument("id", help="occurrence id, occ:task:CLIENT:SLUG:YYYYMMDDTHHMMSSZ")
    p.set_defaults(func=cmd_occurrence)

    tube = sub.add_parser("tube", help="pause or resume a tube").add_subparsers(
        dest="action", required=True
    )
    for action in ("pause", "resume"):
        p = tube.add_parser(action, help=f"{action} every task's runs in a tube")
        _connection_args(p)
        p.add_argument("tube", help="the tube's name")
        p.set_defaults(func=cmd_tube)

    repl = sub.add_parser("replication", help="primary <-> standby replication").add_subparsers(
        dest="action", required=True
    )
    for action, text in (
        ("setup", "create continuous replications both ways"),
        ("status", "state and lag of each direction"),
    ):
        p = repl.add_parser(action, help=text)
        _connection_args(p)
        p.add_argument("--json", action="store_true", help="the report as JSON, for scripts")
        p.set_defaults(func=cmd_replication)

    p = sub.add_parser("recover", help="rebuild a new primary from the standby and verify it")
    _connection_args(p)
    p.add_argument("--from", dest="source", required=True, help="the standby's URL")
    p.add_argument("--to", dest="target", required=True, help="the new primary's URL")
    p.add_argument("--sample", type=int, default=50, help="document bodies to compare per db")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds for a probe written on each server to be read on the other "
        "(replication proven both ways) before the recovery fails (default 120)",
    )
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser(
        "audit",
        help="compare primary and standby: differing, missing and conflicted documents, "
        "occurrences with two results (exit 1 if any)",
    )
    _connection_args(p)
    p.add_argument("--primary", help="the primary's URL (default: the first of --url)")
    p.add_argument("--standby", help="the standby's URL (default: the second of --url)")
    p.add_argument("--json", action="store_true", help="the report as JSON, for scripts")
    p.set_defaults(func=cmd_audit)

    tallies = sub.add_parser("tallies", help="the dashboard's monthly per-task tallies")
    tallies_sub = tallies.add_subparsers(dest="action", required=True)
    p = tallies_sub.add_parser(
        "rebuild", help="recount tallies from the stored results (safe while the hub archives)"
    )
    _connection_args(p)
    p.add_argument(
        "--month",
        action="append",
        metavar="YYYY-MM",
        help="month to recount (repeatable; default: every month, needs admin)",
    )
    p.add_argument("--task", metavar="TASK_ID", help="only this task (task:CLIENT:SLUG)")
    p.add_argument("--dry-run", action="store_true", help="report, write nothing")
    p.set_defaults(func=cmd_tallies)

    p = sub.add_parser("devserver", help="run a local PouchDB Server (development only)")
    p.add_argument("--dir", default="var/devserver", help="data directory")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--admin-password", default="admin", help="server admin password")
    p.set_defaults(func=cmd_devserver)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub",
        description=__doc__,
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"couchfarm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug events")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_setup_commands(sub)
    _add_serve_command(sub)
    _add_task_commands(sub)
    _add_ops_commands(sub)
    return parser


EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The service logs every event; a one-shot command says what it did on stdout, and
    # its log lines (task_added ...) would only be noise on stderr unless asked for.
    quiet = logging.INFO if args.command == "serve" else logging.WARNING
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else quiet,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # APScheduler logs every job run at INFO (four lines a second for the materializer).
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except (SettingsError, provision.UserExists, ValueError) as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    except CouchError as exc:
        missing = missing_credentials(args) if exc.status == 401 else []
        if missing:
            print(
                f"hub: CouchDB refused the request (401: it does not know who asks): "
                f"{'; '.join(missing)}. `make demo` prints the settings for the demo.",
                file=sys.stderr,
            )
            return 1
        hint = {401: " (wrong user name or password?)", 403: " (this user lacks the role)"}
        print(f"hub: {exc}{hint.get(exc.status, '')}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
