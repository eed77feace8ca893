"""Where the hub finds CouchDB: flags first, then environment, then defaults.

Environment: ``COUCHFARM_URL`` (comma-separated primary,standby), ``COUCHFARM_USER``,
``COUCHFARM_PASSWORD`` or ``COUCHFARM_PASSWORD_FILE``, ``COUCHFARM_DB``. For admin work
(``hub init``, ``worker add``, ``client add``) ``COUCHDB_USER``/``COUCHDB_PASSWORD`` are read
too, as the couchdb:3 image names them, and win over ``COUCHFARM_USER`` when both are set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hub.protocol.couch import Couch


class SettingsError(ValueError):
    pass


@dataclass
class Connection:
    urls: list[str]
    user: str | None
    password: str | None
    db: str

    def couch(self, **kwargs: object) -> Couch:
        kwargs.setdefault("home_db", self.db)
        return Couch(self.urls, self.user, self.password, **kwargs)  # type: ignore[arg-type]


def read_password_file(path: str | os.PathLike[str]) -> str:
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise SettingsError(f"password file {file} does not exist") from None
    except OSError as exc:
        raise SettingsError(f"cannot read password file {file}: {exc.strerror}") from None


def connection(
    url: str | None = None,
    user: str | None = None,
    password_file: str | None = None,
    db: str | None = None,
    *,
    admin: bool = False,
) -> Connection:
    env = os.environ
    raw = url or env.get("COUCHFARM_URL") or (env.get("COUCHDB_URL") if admin else None)
    if not raw:
        raise SettingsError(
            "no CouchDB URL: pass --url http://host:5984[,http://standby:5984] or set COUCHFARM_URL"
        )
    # Admin work with the server admin's pair set uses it, even where the hub user's
    # COUCHFARM_* settings are exported too (the demo prints both): the hub user may not
    # set roles. An explicit --user or --password-file still decides.
    server_admin = (
        admin
        and not user
        and not password_file
        and bool(env.get("COUCHDB_USER") and env.get("COUCHDB_PASSWORD"))
    )
    name: str | None
    secret: str | None
    if server_admin:
        name, secret = env["COUCHDB_USER"], env["COUCHDB_PASSWORD"]
    else:
        name = user or env.get("COUCHFARM_USER") or (env.get("COUCHDB_USER") if admin else None)
        if password_file:
            secret = read_password_file(password_file)
        elif env.get("COUCHFARM_PASSWORD_FILE"):
            secret = read_password_file(env["COUCHFARM_PASSWORD_FILE"])
        else:
            secret = env.get("COUCHFARM_PASSWORD") or (
                env.get("COUCHDB_PASSWORD") if admin else None
            )
    urls = [u.strip() for u in raw.split(",") if u.strip()]
    return Connection(urls, name, secret, db or env.get("COUCHFARM_DB") or "farm")
