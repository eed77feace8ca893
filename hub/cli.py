"""The ``hub`` command: set up the farm, manage users and tasks, run the hub service."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hub import provision
from hub.couch import CouchError
from hub.settings import Connection, SettingsError, connection, read_password_file
from hub.version import __version__

Handler = Callable[[argparse.Namespace], int]


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="CouchDB URL(s), primary first, comma-separated")
    parser.add_argument("--user", help="CouchDB user name")
    parser.add_argument("--password-file", help="file holding the CouchDB password")
    parser.add_argument("--db", help="live database name (default farm)")


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


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description=__doc__)
    parser.add_argument("--version", action="version", version=f"couchfarm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug events")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create databases, design docs, security and the hub user")
    _connection_args(p)
    p.add_argument("--hub-user", default="hub", help="service user with role farm_admin")
    p.add_argument("--password-from", help="file with the hub user's password (else generated)")
    p.set_defaults(func=cmd_init)

    for noun, role_of, what in (
        ("worker", lambda n: [provision.WORKER_ROLE], "worker"),
        ("client", lambda n: [provision.CLIENT_ROLE_PREFIX + n], "client"),
    ):
        group = sub.add_parser(noun, help=f"manage {noun} accounts").add_subparsers(
            dest="action", required=True
        )
        p = group.add_parser("add", help=f"create a {noun} user")
        _connection_args(p)
        p.add_argument("name")
        p.add_argument("--password", help="the password (else a strong one is generated)")
        p.add_argument("--password-from", help="read the password from this file")
        p.add_argument("--reset", action="store_true", help="set a new password if it exists")
        p.set_defaults(func=_cmd_add_user(role_of, what))

    p = sub.add_parser("devserver", help="run a local PouchDB Server (development only)")
    p.add_argument("--dir", default="var/devserver", help="data directory")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--admin-password", default="admin", help="server admin password")
    p.set_defaults(func=cmd_devserver)
    return parser


EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except (SettingsError, provision.UserExists, ValueError) as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    except CouchError as exc:
        hint = {401: " (wrong user name or password?)", 403: " (this user lacks the role)"}
        print(f"hub: {exc}{hint.get(exc.status, '')}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
