"""Run the portal inside ``hub serve``: uvicorn on a background thread.

Settings from the environment:

- ``COUCHFARM_PORTAL_SECRET`` or ``COUCHFARM_PORTAL_SECRET_FILE``: the key that signs
  session cookies. Without one a random key is made at start, so restarting the hub logs
  everyone out (and two hubs behind one address would not share sessions).
- ``COUCHFARM_PORTAL_SECURE_COOKIES=1``: mark cookies Secure even when the request reached
  uvicorn over plain http (a TLS-terminating proxy in front).
- ``COUCHFARM_PORTAL_FORWARDED_IPS``: proxies whose X-Forwarded-For/-Proto are trusted
  (uvicorn's ``forwarded_allow_ips``; default 127.0.0.1).
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.service import FarmService

log = logging.getLogger("couchfarm.portal")


@dataclass
class RunningPortal:
    url: str
    server: Any
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        log.info("event=portal_stopped url=%s", self.url)


def portal_secret() -> str:
    path = os.environ.get("COUCHFARM_PORTAL_SECRET_FILE")
    if path:
        return Path(path).read_text(encoding="utf-8").strip()
    secret = os.environ.get("COUCHFARM_PORTAL_SECRET")
    if secret:
        return secret
    log.warning(
        "event=portal_secret_generated why='no COUCHFARM_PORTAL_SECRET; sessions end when the "
        "hub restarts'"
    )
    return secrets.token_urlsafe(32)


def replication_reader(
    couch: Any, db: str, admin: Any = None
) -> Callable[[], dict[str, Any]] | None:
    """The ops page's replication health, or None when there is no standby to watch.

    With ``admin`` (the hub's server-admin connection) each replication's own state is read
    (CouchDB's ``/_scheduler``, PouchDB Server's ``_replicator`` doc); the hub's own
    farm_admin user may not read them, so without it every state is "unknown" and the page
    says so rather than calling the replication healthy."""
    if len(getattr(couch, "servers", [])) < 2:
        return None
    from hub import replication

    can_read_states = admin is not None and len(getattr(admin, "servers", [])) >= 2
    reader = admin if can_read_states else couch

    def read() -> dict[str, Any]:
        primary, standby = reader.for_server(0), reader.for_server(1)
        health = replication.status(primary, standby, db, admin=can_read_states)
        return {**health.as_dict(), "states_readable": can_read_states}

    return read


def serve_app(app: Any, host: str, port: int, **uvicorn_options: Any) -> RunningPortal:
    """Start ``app`` with uvicorn on a daemon thread; returns once it accepts connections."""
    import uvicorn

    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "proxy_headers": True,
        "forwarded_allow_ips": os.environ.get("COUCHFARM_PORTAL_FORWARDED_IPS", "127.0.0.1"),
        "server_header": False,
    } | uvicorn_options
    config = uvicorn.Config(app, host=host, port=port, **options)
    server = uvicorn.Server(config)
    if hasattr(server, "install_signal_handlers"):  # uvicorn < 0.29: the main thread's only
        server.install_signal_handlers = lambda: None
    thread = threading.Thread(target=server.run, name="portal", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the portal did not start on {host}:{port}")
        time.sleep(0.02)
    bound = port
    for listener in getattr(server, "servers", []):
        for sock in getattr(listener, "sockets", []):
            bound = sock.getsockname()[1]
            break
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}"
    return RunningPortal(url=url, server=server, thread=thread)


def start_portal(hub: Any, host: str = "127.0.0.1", port: int = 8080) -> RunningPortal:
    """The portal for a running :class:`hub.serve.Hub`, served on ``host:port``."""
    from hub.portal.app import PortalSettings, create_app

    secret = portal_secret()
    settings = PortalSettings(
        secret_key=secret,
        secure_cookies=os.environ.get("COUCHFARM_PORTAL_SECURE_COOKIES", "") in ("1", "true"),
    )
    service = FarmService(
        hub.couch, hub.config.db, min_interval=getattr(hub.config, "min_interval", 10)
    )
    admin = getattr(hub, "admin", None)
    app = create_app(
        service,
        hub.couch,
        secret_key=secret,
        settings=settings,
        dbs_couch=admin,
        users_reader=admin,
        replication_status=replication_reader(hub.couch, hub.config.db, admin),
    )
    running = serve_app(app, host, port)
    log.info("event=portal_started url=%s", running.url)
    print(f"portal: {running.url}", file=sys.stderr, flush=True)
    return running
