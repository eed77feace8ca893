"""CouchDB access: the only module that speaks HTTP to CouchDB.

Built on the IBM Cloud SDK core that ``ibmcloudant`` is made of: :class:`CouchService` is
its ``BaseService`` with ``BasicAuthenticator`` (ibmcloudant's session authenticator sends
``username`` and fails on PouchDB Server). ``Couch`` never called one of ``CloudantV1``'s
generated operations, only the base's ``prepare_request``/``send``, and importing
``ibmcloudant`` loads its generated 870 KB ``cloudant_v1.py`` (2.4 MB of an idle tray
worker; docs/ARCHITECTURE.md, "CouchDB access"). Every call goes through
:meth:`Couch.request`, which gives:

- an ordered list of servers (primary, standby...) with failover and timed fail-back;
- connect/read timeouts;
- retries with backoff and full jitter on connection errors, 429 and 5xx, never on 4xx;
- typed errors (:class:`Conflict`, :class:`NotFound`, ...) that name the server and reason;
- a per-server clock offset read from the ``Date`` header, so callers write hub time;
- request counting, for the benchmarks' requests-per-occurrence figure.

Where PouchDB Server differs from CouchDB 3 in a way the code must absorb, the absorption
is here and marked ``POUCHDB:`` (see docs/POUCHDB_DIFFERENCES.md).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests
from ibm_cloud_sdk_core import ApiException, BaseService
from ibm_cloud_sdk_core.authenticators import Authenticator, BasicAuthenticator, NoAuthAuthenticator

log = logging.getLogger("couchfarm.couch")

# Carried by a server `hub recover` is rebuilding, in the live database: {"state":
# "rebuilding"} until both replications are proven, then "verified". A client does not fail
# back to a server whose marker is not "verified" (Couch._recovered). A _local document
# never replicates, is not in _all_docs or _changes, and any reader of the database may
# GET it.
RECOVERY_MARKER_ID = "_local/couchfarm-recovery"

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# A 500 that names its error (compilation_error, a crashed validate_doc_update...) is a
# fault in what we sent, not a passing overload: retrying it only repeats it.
NON_RETRYABLE_500_ERRORS = frozenset(
    {"compilation_error", "render_error", "unknown_error", "bad_request"}
)


# ---------------------------------------------------------------- errors


class CouchError(Exception):
    """A CouchDB request failed. ``status`` is the HTTP code (0 when none came back)."""

    status = 0

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str = "",
        reason: str = "",
        server: str = "",
        retried: bool = False,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.error = error
        self.reason = reason
        self.server = server
        # True when the request was sent more than once: a Conflict after a retry may be
        # our own first attempt having succeeded, and callers that care re-check.
        self.retried = retried


class BadRequest(CouchError):
    status = 400


class Unauthorized(CouchError):
    status = 401


class Forbidden(CouchError):
    status = 403


class NotFound(CouchError):
    status = 404


class Conflict(CouchError):
    status = 409


class PreconditionFailed(CouchError):
    status = 412


class TooLarge(CouchError):
    status = 413


class Unavailable(CouchError):
    """No server answered (connection refused, timed out, or kept failing with 5xx)."""


class StreamBrokeOff(Unavailable):
    """A continuous ``_changes`` stream that had connected stopped delivering."""


ERROR_BY_STATUS: dict[int, type[CouchError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: TooLarge,
}


# ---------------------------------------------------------------- clock


@dataclass
class ServerClock:
    """Offset of one server's clock from ours, bounded from HTTP ``Date`` headers.

    A ``Date`` of D (whole seconds) on a response we sent at local t0 and got at t1 means
    the offset lies in [D - t1, D + 1 - t0]. Intersecting those intervals over many
    responses narrows the offset to well under a second (as htpdate does). If the
    intervals stop overlapping, a clock jumped, and we start again from the latest one.
    """

    low: float | None = None
    high: float | None = None
    samples: int = 0

    def observe(self, date_header: str | None, sent: float, received: float) -> None:
        if not date_header:
            return
        try:
            server_seconds = parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError):
            return
        low, high = server_seconds - received, server_seconds + 1.0 - sent
        if self.low is None or self.high is None or low > self.high or high < self.low:
            self.low, self.high = low, high
        else:
            self.low, self.high = max(self.low, low), min(self.high, high)
        self.samples += 1

    @property
    def offset(self) -> float:
        """Seconds to add to the local clock to get the server's."""
        if self.low is None or self.high is None:
            return 0.0
        return (self.low + self.high) / 2

    @property
    def uncertainty(self) -> float:
        if self.low is None or self.high is None:
            return float("inf")
        return (self.high - self.low) / 2

    def now(self, local_time: float | None = None) -> datetime:
        local = time.time() if local_time is None else local_time
        return datetime.fromtimestamp(local + self.offset, UTC)


# ---------------------------------------------------------------- servers


class CouchService(BaseService):  # type: ignore[misc]  # the SDK core ships no types
    """The HTTP service for one CouchDB server: the SDK core's ``BaseService``, which
    ``ibmcloudant.CloudantV1`` extends with generated operations and checks ``Couch`` does
    not use. ``Couch`` passes its own timeouts to every ``send`` and reads error bodies
    itself, so CloudantBaseService's default timeouts and error-body rewriting are not
    needed either."""

    DEFAULT_SERVICE_NAME = "couchdb"

    def __init__(self, url: str, authenticator: Authenticator) -> None:
        super().__init__(service_url=url, authenticator=authenticator)


@dataclass
class Server:
    url: str
    service: CouchService
    clock: ServerClock = field(default_factory=ServerClock)
    failures: int = 0

    @property
    def label(self) -> str:
        """The URL without credentials, for messages and logs."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """'http://u:p@host:5984' -> ('http://host:5984', 'u', 'p')."""
    parts = urlsplit(url)
    bare = redact_url(url).rstrip("/")
    user = parts.username
    password = parts.password
    return (
        bare,
        (unquote(user) if user else None),
        (unquote(password) if password else None),
    )


def _env_write_quorum() -> int | None:
    """``COUCHFARM_WRITE_QUORUM``: the ``w`` every write asks for (unset: the server's)."""
    raw = os.environ.get("COUCHFARM_WRITE_QUORUM", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(
            f"COUCHFARM_WRITE_QUORUM must be a whole number of copies >= 1, not {raw!r}"
        )
    return int(raw)


@dataclass(frozen=True)
class Written:
    rev: str
    quorum: bool  # False: a cluster answered 202 Accepted (fewer copies than w took it)


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def object(self) -> dict[str, Any]:
        """The body as the JSON object every document, view and info endpoint answers."""
        if not isinstance(self.body, dict):
            raise CouchError(
                f"expected a JSON object from CouchDB, got {self.body!r:.80}",
                status=self.status,
                error="bad_reply",
            )
        return self.body


# ---------------------------------------------------------------- client


class Couch:
    """A CouchDB client over an ordered list of servers, primary first."""

    def __init__(
        self,
        urls: str | Iterable[str],
        user: str | None = None,
        password: str | None = None,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 15.0,
        retries: int = 2,
        backoff_base: float = 0.2,
        backoff_max: float = 3.0,
        fail_back_after: float = 30.0,
        verify: bool | str = True,
        local_clock: Callable[[], float] | None = None,
        home_db: str | None = None,
        write_quorum: int | None = None,
    ) -> None:
        if isinstance(urls, str):
            urls = [u for u in urls.split(",") if u.strip()]
        self.servers: list[Server] = []
        for raw in urls:
            bare, url_user, url_password = split_credentials(raw.strip())
            name = user if user is not None else url_user
            secret = password if password is not None else url_password
            authenticator = (
                BasicAuthenticator(name, secret)
                if name is not None and secret is not None
                else NoAuthAuthenticator()
            )
            service = CouchService(bare, authenticator)
            # Our documents are small; compressing each body costs CPU and buys nothing.
            service.set_enable_gzip_compression(False)
            service.set_disable_ssl_verification(verify is False)
            if isinstance(verify, str):
                service.set_http_config({"verify": verify})
            self.servers.append(Server(url=bare, service=service))
        if not self.servers:
            raise ValueError("no CouchDB server URL given")
        self.user = user
        # On a CouchDB cluster: how many copies of a shard must take a write before it is
        # answered (CouchDB's default is a majority, n/2 + 1). With all n, a view or
        # _changes read right after a write sees it, whichever copy answers: the suite's
        # read-your-writes on a cluster (docs/DEPLOY.md). Unset: the server's default.
        self.write_quorum = write_quorum if write_quorum is not None else _env_write_quorum()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.fail_back_after = fail_back_after
        self.verify = verify
        # With a home database, fail back only once the primary holds it and has caught
        # up with the server we are on: a primary rebuilt empty answers "/" long before its
        # data is back, and writing to it then would split the farm in two.
        self.home_db = home_db
        self._refused_marker: str | None = None  # the recovery marker last logged as refused
        # The local wall clock the server offsets are measured against (injectable, so
        # tests can play a PC whose clock is hours off); hub time = local + offset.
        self.local_clock: Callable[[], float] = local_clock or time.time
        self._active = 0
        self._left_primary_at = 0.0
        self._lock = threading.Lock()
        self._copies: dict[str, int] = {}
        self.requests_sent = 0
        self.failovers = 0

    # ------------------------------------------------------------ state

    @property
    def active(self) -> Server:
        return self.servers[self._active]

    @property
    def on_primary(self) -> bool:
        return self._active == 0

    def now(self) -> datetime:
        """Hub time: the active server's clock, never the local one."""
        return self.active.clock.now(self.local_clock())

    def for_server(self, index: int) -> Couch:
        """A client bound to one server of this list, with no failover (for checks)."""
        server = self.servers[index]
        clone = Couch.__new__(Couch)
        clone.__dict__.update(self.__dict__)
        clone.servers = [server]
        clone._active = 0
        clone._lock = threading.Lock()
        return clone

    # ------------------------------------------------------------ core

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        stream: bool = False,
    ) -> Response:
        """Send one request, failing over along the server list; raise a typed error."""
        self._maybe_fail_back()
        tried = 0
        last_error: CouchError | None = None
        for _ in range(len(self.servers)):
            index = self._active
            server = self.servers[index]
            try:
                return self._request_with_retries(
                    server, method, path, params, body, headers, timeout, stream, tried
                )
            except Unavailable as exc:
                last_error = exc
                tried += 1
                self._fail_over_from(index)
        assert last_error is not None
        raise last_error

    def _request_with_retries(
        self,
        server: Server,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        body: Any,
        headers: dict[str, str] | None,
        timeout: float | None,
        stream: bool,
        earlier_sends: int,
    ) -> Response:
        attempt = 0
        while True:
            sends = earlier_sends + attempt
            try:
                response = self._send_once(
                    server, method, path, params, body, headers, timeout, stream
                )
                server.failures = 0
                return response
            except CouchError as exc:
                exc.retried = sends > 0
                retryable = isinstance(exc, Unavailable) or (
                    exc.status in RETRYABLE_STATUS and exc.error not in NON_RETRYABLE_500_ERRORS
                )
                if not retryable:
                    raise
                server.failures += 1
                if attempt >= self.retries:
                    raise Unavailable(
                        f"{server.label} did not answer {method} {path}: {exc}",
                        status=exc.status,
                        server=server.label,
                        retried=True,
                    ) from exc
                delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
                log.info(
                    "event=couch_retry server=%s method=%s path=%s attempt=%d delay=%.2f error=%r",
                    server.label,
                    method,
                    path,
                    attempt + 1,
                    delay,
                    str(exc),
                )
                time.sleep(delay)
                attempt += 1

    def _send_once(
        self,
        server: Server,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        body: Any,
        headers: dict[str, str] | None,
        timeout: float | None,
        stream: bool,
    ) -> Response:
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        all_headers = {"Accept": "application/json"}
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        if headers:
            all_headers.update(headers)
        prepared = server.service.prepare_request(
            method, path, headers=all_headers, params=params, data=data
        )
        read = timeout if timeout is not None else self.read_timeout
        sent = self.local_clock()
        self.requests_sent += 1
        try:
            detailed = server.service.send(
                prepared, timeout=(self.connect_timeout, read), stream=stream
            )
        except ApiException as exc:
            http = exc.http_response
            if http is not None:
                server.clock.observe(http.headers.get("Date"), sent, self.local_clock())
            raise self._typed_error(exc, server, method, path) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Unavailable(
                f"{server.label}: {type(exc).__name__} on {method} {path}", server=server.label
            ) from exc
        except requests.RequestException as exc:
            raise Unavailable(f"{server.label}: {exc}", server=server.label) from exc
        response_headers = dict(detailed.get_headers() or {})
        server.clock.observe(response_headers.get("Date"), sent, self.local_clock())
        return Response(detailed.get_status_code(), detailed.get_result(), response_headers)

    @staticmethod
    def _typed_error(exc: ApiException, server: Server, method: str, path: str) -> CouchError:
        http = exc.http_response
        error, reason = "", exc.message or ""
        if http is not None:
            try:
                payload = http.json()
                error = str(payload.get("error", ""))
                reason = str(payload.get("reason", reason))
            except ValueError:
                reason = http.text[:300] or reason
        cls = ERROR_BY_STATUS.get(exc.status_code, CouchError)
        message = f"{method} {path} on {server.label}: {exc.status_code} {error}: {reason}".strip()
        return cls(message, status=exc.status_code, error=error, reason=reason, server=server.label)

    # ------------------------------------------------------------ failover

    def _fail_over_from(self, index: int) -> None:
        with self._lock:
            if self._active != index:
                return  # another thread already moved on
            self._active = (index + 1) % len(self.servers)
            if index == 0:
                self._left_primary_at = time.monotonic()
            self.failovers += 1
        log.warning(
            "event=couch_failover from=%s to=%s",
            self.servers[index].label,
            self.servers[self._active].label,
        )

    def fail_back_soon(self) -> None:
        """Check at the next request whether the primary may be used again, instead of
        after ``fail_back_after`` (the hub said it went back there). The checks still
        apply: a rebuilding or lagging primary is refused."""
        with self._lock:
            if self._active != 0:
                self._left_primary_at = float("-inf")

    def _maybe_fail_back(self) -> None:
        if self._active == 0 or time.monotonic() - self._left_primary_at < self.fail_back_after:
            return
        primary = self.servers[0]
        self._left_primary_at = time.monotonic()  # probe at most once per period
        try:
            if self.home_db is None:
                self._send_once(primary, "GET", "/", None, None, None, 2.0, False)
            # The marker's GET also shows the primary answers: no extra request.
            elif not self._recovered(primary) or not self._caught_up(primary):
                return
        except CouchError:
            return
        with self._lock:
            self._active = 0
        log.warning("event=couch_failback to=%s", primary.label)

    def _recovered(self, primary: Server) -> bool:
        """False while the primary carries a recovery marker that is not ``verified``:
        ``hub recover`` is rebuilding it (``RECOVERY_MARKER_ID``, a ``_local`` document in
        the home database, so it never replicates). No marker (404): an ordinary server,
        or one not rebuilt yet, whose missing database :meth:`_caught_up` then refuses."""
        path = self.doc_path(str(self.home_db), RECOVERY_MARKER_ID)
        try:
            marker = self._send_once(primary, "GET", path, None, None, None, 3.0, False).body
        except NotFound:
            return True
        state = str((marker or {}).get("state", ""))
        if state == "verified":
            if self._refused_marker is not None:
                log.warning("event=failback_recovery_verified primary=%s", primary.label)
                self._refused_marker = None
            return True
        seen = f"{state}:{(marker or {}).get('started_at', '')}"
        if self._refused_marker != seen:  # once per recovery, not every fail-back period
            self._refused_marker = seen
            log.warning(
                "event=failback_refused primary=%s reason=recovery_marker state=%s since=%s",
                primary.label,
                state or "unknown",
                (marker or {}).get("started_at", ""),
            )
        return False

    def _caught_up(self, primary: Server) -> bool:
        path = f"/{quote(str(self.home_db), safe='')}"
        theirs = self._send_once(primary, "GET", path, None, None, None, 3.0, False).body
        ours = self._send_once(self.active, "GET", path, None, None, None, 3.0, False).body
        behind = int(ours.get("doc_count", 0)) - int(theirs.get("doc_count", 0))
        if behind > max(10, int(ours.get("doc_count", 0)) // 100):
            log.info("event=failback_waits primary=%s behind_docs=%d", primary.label, behind)
            return False
        return True

    def probe(self) -> list[tuple[str, bool, str]]:
        """Ask every server for ``/``: [(label, answered, detail)]. For health pages."""
        report = []
        for server in self.servers:
            try:
                reply = self._send_once(server, "GET", "/", None, None, None, 3.0, False)
                report.append((server.label, True, str(reply.body.get("version", ""))))
            except CouchError as exc:
                report.append((server.label, False, str(exc)))
        return report

    # ------------------------------------------------------------ documents

    @staticmethod
    def doc_path(db: str, doc_id: str) -> str:
        if doc_id.startswith("_design/") or doc_id.startswith("_local/"):
            prefix, rest = doc_id.split("/", 1)
            return f"/{quote(db, safe='')}/{prefix}/{quote(rest, safe='')}"
        return f"/{quote(db, safe='')}/{quote(doc_id, safe='')}"

    def get(self, db: str, doc_id: str, **params: Any) -> dict[str, Any]:
        return self.request("GET", self.doc_path(db, doc_id), params=params or None).object

    def get_or_none(self, db: str, doc_id: str, **params: Any) -> dict[str, Any] | None:
        try:
            return self.get(db, doc_id, **params)
        except NotFound:
            return None

    def _write_params(self, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        if self.write_quorum is None:
            return params or None
        return {"w": self.write_quorum, **(params or {})}

    def put(self, db: str, doc: dict[str, Any], **params: Any) -> str:
        """PUT a document with the ``_rev`` it carries; returns the new rev (doc unchanged)."""
        return self.put_counted(db, doc, **params).rev

    def put_counted(self, db: str, doc: dict[str, Any], **params: Any) -> Written:
        """PUT, and say whether the write reached ``w`` copies (201) or fewer (202
        Accepted: only a CouchDB cluster answers that, when some copies refused it, for
        example for a concurrent edit of the same revision, or did not answer)."""
        path = self.doc_path(db, doc["_id"])
        reply = self.request("PUT", path, body=doc, params=self._write_params(params))
        return Written(rev=str(reply.body["rev"]), quorum=reply.status != 202)

    def update(self, db: str, ddoc: str, function: str, doc_id: str, body: dict[str, Any]) -> str:
        """Call the update function ``_design/{ddoc}/_update/{function}/{doc_id}`` with a
        JSON body: the server applies it to the current revision and saves the result as
        the caller (``validate_doc_update`` included), in one request. Returns the new rev.
        A save that lost to a concurrent write is a 409 (``Conflict``) like a PUT's."""
        path = f"/{quote(db, safe='')}/_design/{quote(ddoc, safe='')}/_update/" + (
            f"{quote(function, safe='')}/{quote(doc_id, safe='')}"
        )
        reply = self.request("PUT", path, body=body, params=self._write_params())
        rev = next(
            (v for k, v in reply.headers.items() if k.lower() == "x-couch-update-newrev"), ""
        )
        if not rev:
            raise CouchError(
                f"PUT {path}: the update function saved nothing (no X-Couch-Update-NewRev)",
                status=reply.status,
                error="bad_reply",
            )
        return str(rev).strip()

    def copies(self, db: str) -> int:
        """How many copies each shard of ``db`` has: ``n`` on a CouchDB cluster (its db
        info names it), 1 on a single node or PouchDB Server. Read once per db."""
        with self._lock:
            known = self._copies.get(db)
        if known is None:
            cluster = self.db_info(db).get("cluster") or {}
            n = cluster.get("n") if isinstance(cluster, dict) else None
            known = n if isinstance(n, int) and n > 0 else 1
            with self._lock:
                self._copies[db] = known
        return known

    def majority(self, db: str) -> int:
        """A majority of the copies of ``db``'s shards: ``n // 2 + 1`` (1 off a cluster)."""
        return self.copies(db) // 2 + 1

    def delete(self, db: str, doc_id: str, rev: str) -> str:
        # POUCHDB: DELETE without a rev deletes there (CouchDB: 409); we always send one.
        path = self.doc_path(db, doc_id)
        reply = self.request("DELETE", path, params=self._write_params({"rev": rev}))
        return str(reply.body["rev"])

    def bulk_docs(
        self, db: str, docs: list[dict[str, Any]], *, new_edits: bool = True, w: int | None = None
    ) -> list[dict[str, Any]]:
        """POST _bulk_docs; one row per input doc, in input order.

        Rows are ``{"id", "rev"}`` or ``{"id", "error", "reason"}``; on a CouchDB cluster a
        row that fewer than ``w`` copies took also says ``"accepted": true``.
        """
        if not docs:
            return []
        body: dict[str, Any] = {"docs": docs}
        if not new_edits:
            body["new_edits"] = False
        path = f"/{quote(db, safe='')}/_bulk_docs"
        reply = self.request(
            "POST", path, body=body, params=self._write_params(None if w is None else {"w": w})
        )
        rows = reply.body or []
        # POUCHDB: results are not in input order there; CouchDB's are. Match by id, in order.
        by_id: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_id.setdefault(str(row.get("id")), []).append(row)
        ordered = []
        for doc in docs:
            bucket = by_id.get(str(doc.get("_id")), [])
            ordered.append(bucket.pop(0) if bucket else {"id": doc.get("_id"), "error": "missing"})
        return ordered

    def all_docs(self, db: str, **params: Any) -> list[dict[str, Any]]:
        body = {}
        if "keys" in params:
            body["keys"] = params.pop("keys")
        reply = self.request(
            "POST", f"/{quote(db, safe='')}/_all_docs", params=_view_params(params), body=body
        )
        return list(reply.body["rows"])

    def view(
        self, db: str, ddoc: str, view: str, *, keys: list[Any] | None = None, **params: Any
    ) -> dict[str, Any]:
        """Query a view; returns the whole body (``rows``, ``total_rows``...)."""
        path = f"/{quote(db, safe='')}/_design/{ddoc}/_view/{view}"
        if keys is not None:
            return self.request(
                "POST", path, params=_view_params(params), body={"keys": keys}
            ).object
        return self.request("GET", path, params=_view_params(params)).object

    def find(self, db: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.request("POST", f"/{quote(db, safe='')}/_find", body=query).body["docs"])

    # ------------------------------------------------------------ databases

    def all_dbs(self) -> list[str]:
        return list(self.request("GET", "/_all_dbs").body)

    def db_info(self, db: str) -> dict[str, Any]:
        return self.request("GET", f"/{quote(db, safe='')}").object

    def create_db(self, db: str) -> bool:
        """Create a database; False if it already existed."""
        try:
            self.request("PUT", f"/{quote(db, safe='')}")
            return True
        except PreconditionFailed:
            return False

    def delete_db(self, db: str) -> bool:
        try:
            self.request("DELETE", f"/{quote(db, safe='')}")
            return True
        except NotFound:
            return False

    def get_security(self, db: str) -> dict[str, Any]:
        return self.request("GET", f"/{quote(db, safe='')}/_security").body or {}

    def put_security(self, db: str, security: dict[str, Any]) -> None:
        self.request("PUT", f"/{quote(db, safe='')}/_security", body=security)

    def session(self) -> dict[str, Any]:
        return self.request("GET", "/_session").object

    # ------------------------------------------------------------ changes

    def changes(
        self,
        db: str,
        *,
        since: str = "0",
        feed: str = "normal",
        wait: float = 25.0,
        include_docs: bool = False,
        limit: int | None = None,
        doc_ids: list[str] | None = None,
        conflicts: bool = False,
        params: dict[str, Any] | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """One ``_changes`` request: ``feed='longpoll'`` waits up to ``wait`` seconds.

        Returns (results, last_seq). A longpoll that times out returns ([], since).
        """
        query: dict[str, Any] = {"since": since, "feed": feed}
        if include_docs:
            query["include_docs"] = "true"
        if conflicts:
            query["conflicts"] = "true"
        if limit is not None:
            query["limit"] = limit
        if params:
            query.update(params)
        body: dict[str, Any] | None = None
        if doc_ids is not None:
            query["filter"] = "_doc_ids"
            body = {"doc_ids": doc_ids}
        path = f"/{quote(db, safe='')}/_changes"
        if feed != "longpoll":
            reply = self.request("POST" if body else "GET", path, params=query, body=body)
            return list(reply.body["results"]), str(reply.body["last_seq"])
        query["timeout"] = int(wait * 1000)
        query["heartbeat"] = 5000
        # POUCHDB: the server ignores `timeout` on longpoll and keeps the request open with
        # heartbeat newlines, so the wait is bounded here, on our side, for any server.
        reply = self.request(
            "POST" if body else "GET",
            path,
            params=query,
            body=body,
            headers={"Accept-Encoding": "identity"},
            timeout=min(wait, 10.0) + 5.0,
            stream=True,
        )
        raw = reply.body
        if not isinstance(raw, requests.Response):  # a server that sent JSON straight away
            payload = raw if isinstance(raw, dict) else {"results": [], "last_seq": since}
            return list(payload.get("results", [])), str(payload.get("last_seq", since))
        text = _read_with_deadline(raw, time.monotonic() + wait + 1.0)
        if text is None or not text.strip():
            return [], since
        payload = json.loads(text)
        return list(payload.get("results", [])), str(payload.get("last_seq", since))

    def changes_stream(
        self,
        db: str,
        *,
        since: str,
        heartbeat_s: float = 5.0,
        max_s: float = 300.0,
        include_docs: bool = False,
        params: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any] | None]:
        """One ``feed=continuous`` request: yields each change row as it arrives, and
        ``None`` on each heartbeat (so the caller can look up between rows).

        A whole stream of changes costs one request, where longpoll costs one per wake-up.
        It ends (returns) after ``max_s`` or when the server closes it; the caller resumes
        from the last row's ``seq``. A stream silent for three heartbeats is dead: Unavailable.
        """
        query: dict[str, Any] = {
            "since": since,
            "feed": "continuous",
            "heartbeat": int(heartbeat_s * 1000),
            "timeout": int(max_s * 1000),
        }
        if include_docs:
            query["include_docs"] = "true"
        if params:
            query.update(params)
        reply = self.request(
            "GET",
            f"/{quote(db, safe='')}/_changes",
            params=query,
            # POUCHDB: with gzip a continuous feed delivers nothing until it ends.
            headers={"Accept-Encoding": "identity"},
            timeout=heartbeat_s * 3 + 2.0,
            stream=True,
        )
        raw = reply.body
        if not isinstance(raw, requests.Response):  # a server that answered in one piece
            payload = raw if isinstance(raw, dict) else {}
            yield from payload.get("results", [])
            return
        # POUCHDB: `timeout` is ignored on feeds, so the stream's length is bounded here.
        deadline = time.monotonic() + max_s
        try:
            for line in raw.iter_lines(chunk_size=None):  # type: ignore[call-overload]  # None: as it comes
                if not line.strip():
                    yield None
                else:
                    row = json.loads(line)
                    if "last_seq" in row and "id" not in row:
                        return  # the server ended the feed
                    yield row
                if time.monotonic() > deadline:
                    return
        except requests.RequestException as exc:
            raise StreamBrokeOff(f"the _changes stream broke off: {type(exc).__name__}") from exc
        except ValueError as exc:
            raise CouchError(f"the _changes stream sent a line that is not JSON: {exc}") from exc
        finally:
            raw.close()

    def update_seq(self, db: str) -> str:
        return str(self.db_info(db)["update_seq"])


def _read_with_deadline(response: requests.Response, deadline: float) -> str | None:
    chunks: list[bytes] = []
    try:
        for chunk in response.iter_content(chunk_size=None):
            if chunk:
                chunks.append(chunk)
                if chunk.rstrip().endswith(b"}") and _complete_json(b"".join(chunks)):
                    break
            if time.monotonic() > deadline:
                return None
    except requests.RequestException as exc:
        if time.monotonic() > deadline:
            return None
        # The server went away mid-feed (ChunkedEncodingError, reset...): say so in our terms.
        raise Unavailable(f"the _changes feed broke off: {type(exc).__name__}") from exc
    finally:
        response.close()
    return b"".join(chunks).decode("utf-8")


def _complete_json(data: bytes) -> bool:
    try:
        json.loads(data)
        return True
    except ValueError:
        return False


def _view_params(params: dict[str, Any]) -> dict[str, Any]:
    """JSON-encode the view parameters CouchDB wants as JSON (keys, ranges)."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        if name in ("key", "startkey", "endkey", "start_key", "end_key"):
            out[name] = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = value
    return out
