"""Portal logins that cannot lock anyone out of CouchDB.

CouchDB 3.5 locks a user after ``threshold`` (5) failed logins from one peer address,
for ``max_lifetime`` (5 minutes from the first failure; ``[chttpd_auth_lockout]``), and
then refuses even the right password from that address. Every portal login reaches
CouchDB from the portal's one address, so if the portal forwarded each guess, a few wrong
passwords typed by anyone would lock the real client out of the portal.

So the portal decides before CouchDB sees a password (:class:`LoginGuard`):

1. **Per browser address** (and per address and user name): a guesser gets ``limit``
   failures per ``window`` and is then refused with a ``Retry-After``. A user is never
   limited as such: the owner logs in at once from any other address.
2. **Checked here first.** Given a reader of ``_users`` (the hub's server-admin
   connection), the portal checks the password against the user's stored PBKDF2 hash
   itself (:class:`UsersDbVerifier`). A wrong password never reaches CouchDB; only one
   the hash confirms is sent to ``POST /_session`` to open the CouchDB session the portal
   keeps for re-checks.
3. **Without that reader**, at most ``couch_failures`` wrong passwords per user are sent
   to CouchDB per lockout window (fewer than its threshold, so its lockout never fires
   because of the portal). Once that budget is spent, only a password this portal saw
   succeed for the user (kept as a salted hash in memory) is forwarded; any other is
   refused with a message that says why and for how long. The owner who logged in here
   before still gets in; one who never did waits out the window. That residue is why
   production gives the hub its server-admin credentials (docs/SECURITY.md).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from hub.portal.security import RateLimiter
from hub.protocol.couch import Couch, CouchError, Forbidden, NotFound, Unauthorized

# CouchDB 3's defaults for [chttpd_auth_lockout]: threshold = 5, max_lifetime = 300000 ms.
COUCH_LOCKOUT_THRESHOLD = 5
COUCH_LOCKOUT_LIFETIME = 300.0


def password_matches(user_doc: dict[str, Any], password: str) -> bool | None:
    """Whether ``password`` is the one ``user_doc`` (a ``_users`` document) stores.

    None when the document holds no hash this code knows (an unknown scheme, or a
    plain ``password`` field the server has not hashed yet): the caller must not guess.
    Knows CouchDB 3's ``pbkdf2`` (prf ``sha1`` before 3.4, ``sha256`` since), PouchDB
    Server's ``pbkdf2`` (sha1, 10 iterations) and the old ``simple`` scheme.
    """
    scheme = user_doc.get("password_scheme")
    salt = user_doc.get("salt")
    if not isinstance(salt, str):
        return None
    if scheme == "pbkdf2":
        derived = user_doc.get("derived_key")
        iterations = user_doc.get("iterations")
        prf = str(user_doc.get("pbkdf2_prf") or "sha1")
        if not isinstance(derived, str) or not isinstance(iterations, int) or iterations < 1:
            return None
        if prf not in ("sha1", "sha224", "sha256", "sha384", "sha512"):
            return None
        try:
            expected = bytes.fromhex(derived)
        except ValueError:
            return None
        key = hashlib.pbkdf2_hmac(
            prf, password.encode("utf-8", "surrogatepass"), salt.encode(), iterations,
            dklen=len(expected),
        )  # fmt: skip
        return hmac.compare_digest(key, expected)
    if scheme == "simple":
        stored = user_doc.get("password_sha")
        if not isinstance(stored, str):
            return None
        digest = hashlib.sha1(password.encode("utf-8", "surrogatepass") + salt.encode())
        return hmac.compare_digest(digest.hexdigest(), stored.lower())
    return None


class UsersDbVerifier:
    """Checks passwords against ``_users`` with a server admin's connection.

    At most ``parallel`` hashes run at once: CouchDB 3.4+ hashes with 600,000 PBKDF2
    rounds (a third of a second here), and guesses from many addresses must not take
    every portal thread.
    """

    def __init__(self, reader: Couch, parallel: int = 2) -> None:
        self.reader = reader
        self._slots = threading.BoundedSemaphore(parallel)
        # An unknown user costs the same hash as a known one, so timing tells nothing.
        self._decoy: dict[str, Any] = {"password_scheme": "pbkdf2", "salt": "0" * 32,
                                       "derived_key": "0" * 40, "iterations": 10}  # fmt: skip

    def __call__(self, name: str, password: str) -> bool | None:
        try:
            doc = self.reader.get("_users", f"org.couchdb.user:{name}")
        except NotFound:
            doc = None
        except (Unauthorized, Forbidden):
            return None  # not a server admin after all: fall back to the budget
        except CouchError:
            return None
        with self._slots:
            if doc is None:
                password_matches(self._decoy, password)
                return False
            matched = password_matches(doc, password)
            if matched is not None and doc.get("password_scheme") == "pbkdf2":
                self._decoy = {**self._decoy, "iterations": doc["iterations"],
                               "pbkdf2_prf": doc.get("pbkdf2_prf", "sha1")}  # fmt: skip
            return matched


@dataclass
class _Budget:
    opened: float
    failures: int = 0


@dataclass(frozen=True)
class Verdict:
    """What the guard says about one login attempt before CouchDB is asked."""

    action: Literal["ask_couch", "refuse", "wrong"]
    retry_after: int = 0
    message: str = ""


class LoginGuard:
    """Per-address limits, local checks and the CouchDB failure budget (module doc)."""

    def __init__(
        self,
        *,
        limit: int = 5,
        window: float = 60.0,
        verify: Callable[[str, str], bool | None] | None = None,
        couch_failures: int = 2,
        couch_window: float = COUCH_LOCKOUT_LIFETIME + 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.addresses = RateLimiter(limit, window, clock, max_keys)
        self.verify = verify
        self.couch_failures = couch_failures
        self.couch_window = couch_window
        self.clock = clock
        self.max_keys = max_keys
        self._budgets: OrderedDict[str, _Budget] = OrderedDict()
        self._known: OrderedDict[str, bytes] = OrderedDict()
        self._pepper = secrets.token_bytes(32)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ per address

    def address_wait(self, ip: str, user: str) -> int:
        keys = (f"ip:{ip}", f"ip-user:{ip}:{user.lower()[:100]}")
        return max((self.addresses.retry_after(key) or 0) for key in keys)

    def address_failed(self, ip: str, user: str) -> None:
        for key in (f"ip:{ip}", f"ip-user:{ip}:{user.lower()[:100]}"):
            self.addresses.fail(key)

    # ------------------------------------------------------------ before CouchDB

    def check(self, user: str, password: str) -> Verdict:
        """Blocking (it may hash): run it off the event loop."""
        if self.verify is not None:
            matched = self.verify(user, password)
            if matched is True:
                return Verdict("ask_couch")
            if matched is False:
                return Verdict("wrong")
        wait = self._budget_wait(user)
        if wait and not self._is_known(user, password):
            return Verdict(
                "refuse", wait,
                f"This account had too many failed logins through the portal. To keep it "
                f"from being locked, other passwords are not tried for {wait} seconds; the "
                f"password last used here still works.",
            )  # fmt: skip
        return Verdict("ask_couch")

    # ------------------------------------------------------------ after CouchDB

    def couch_refused(self, user: str) -> None:
        """CouchDB answered 401: one failure of this user's budget spent."""
        now = self.clock()
        with self._lock:
            budget = self._budgets.pop(user, None)
            if budget is None or now - budget.opened >= self.couch_window:
                budget = _Budget(opened=now)
            budget.failures += 1
            self._budgets[user] = budget
            while len(self._budgets) > self.max_keys:
                self._budgets.popitem(last=False)

    def couch_accepted(self, user: str, password: str) -> None:
        with self._lock:
            self._known.pop(user, None)
            self._known[user] = self._digest(user, password)
            while len(self._known) > self.max_keys:
                self._known.popitem(last=False)

    # ------------------------------------------------------------ internals

    def _budget_wait(self, user: str) -> int:
        now = self.clock()
        with self._lock:
            budget = self._budgets.get(user)
            if budget is None or now - budget.opened >= self.couch_window:
                return 0
            if budget.failures < self.couch_failures:
                return 0
            return max(1, int(budget.opened + self.couch_window - now + 0.999))

    def _is_known(self, user: str, password: str) -> bool:
        with self._lock:
            known = self._known.get(user)
        return known is not None and hmac.compare_digest(known, self._digest(user, password))

    def _digest(self, user: str, password: str) -> bytes:
        # Memory only, keyed by a per-process secret: a dump of the process gives no
        # password a lookup table can reverse cheaply.
        return hashlib.pbkdf2_hmac(
            "sha256", password.encode("utf-8", "surrogatepass"),
            self._pepper + user.encode("utf-8", "surrogatepass"), 20_000,
        )  # fmt: skip
