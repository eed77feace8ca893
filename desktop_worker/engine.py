"""The headless worker engine: claim, lease, run, report, spool. No Qt here.

Threads (all daemons; :meth:`Engine.stop` ends them):

- ``claim loop``: while a slot is free and the engine may take work, claims from the
  ``ready`` view (:mod:`desktop_worker.claim`); when nothing is claimable it sleeps until the
  changes watcher, a finished run or a state change wakes it, or ``poll_interval_s`` passes.
- ``changes watcher``: a ``_changes`` longpoll on the live database, filtered by the
  ``ready`` view and bound to the server the client is using now; wakes the claim loop when
  something becomes ready in our tubes (a new occurrence starts within about a second).
  When the feed fails it retries with backoff; the claim loop's polling covers the gap.
- one ``slot`` thread per run: supervises the runner's child process, touches the lease
  when ``touch_at`` (default 1/2) of the TTR has passed since the last lease write, and
  writes the finishing document. A 409 on touch or finish means the lease is gone: the
  child is cancelled and the result dropped ("lost").
- ``spool``: uploads spooled writes in order when a server answers and deletes finished
  results once they are seen on the standby.
- ``heartbeat``: writes ``worker:{name}`` at most once per ``heartbeat_interval_s``.

Every time written to the hub comes from ``couch.now()`` (server clock), never the PC's.

Observers: :meth:`Engine.add_listener` takes a callable that receives :class:`EngineEvent`
objects, called from engine threads (a GUI must hop to its own thread).
"""

from __future__ import annotations

import json
import logging
import platform
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from desktop_worker.claim import Claimer, ClaimStats
from desktop_worker.config import WorkerConfig
from desktop_worker.confirm import Confirmer, archived_result
from desktop_worker.feed import ClaimFeed
from desktop_worker.log import log_event
from desktop_worker.readyset import ReadySet
from desktop_worker.spool import Spool, SpoolError
from hub.protocol import states
from hub.protocol.couch import (
    BadRequest,
    Conflict,
    Couch,
    CouchError,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
    redact_url,
)
from hub.protocol.model import (
    Backoff,
    Occurrence,
    Progress,
    State,
    WorkerTotals,
    worker_id,
)
from hub.protocol.timefmt import from_wire
from hub.protocol.version import POLICY_DOC_ID, __version__, worker_too_old

LOG_WARNING = logging.WARNING


class EngineState(StrEnum):
    STOPPED = "stopped"
    IDLE = "idle"  # running, nothing to do
    WORKING = "working"  # at least one run
    PAUSED = "paused"  # claims no more until resume(); current runs finish
    DRAINING = "draining"  # finishes current runs, then stops
    OFFLINE = "offline"  # no server answers
    ERROR = "error"  # cannot work safely (spool unwritable, credentials refused)


# The counters a worker document carries (done, failed, lost): the model's fields, read
# without building its validator.
WORKER_TOTALS = tuple(WorkerTotals.model_fields)
# What the worker doc calls each engine state.
DOC_STATE = {
    EngineState.STOPPED: "stopped",
    EngineState.PAUSED: "paused",
    EngineState.ERROR: "paused",
    EngineState.DRAINING: "draining",
}


@dataclass(frozen=True)
class EngineEvent:
    """One thing that happened. ``name`` says which fields are set:

    - ``state_changed``: state, why
    - ``run_started``: occ_id, kind, client
    - ``run_progress``: occ_id, progress (num, den, msg)
    - ``run_finished``: occ_id, kind, client, status: done | retry | buried | failed (the
      hub has the write) | spooled (no server answered; kept locally) | lost (the lease
      was gone: result dropped) | released (stopped or cancelled; lease handed back) |
      cancelled (stopped, hand-back failed) | rejected (the hub refused the write) |
      unsent (no spool and no server: the result is lost) | error (engine fault)
    - ``result_uploaded``: occ_id, status (a spooled write reached the hub later)
    - ``result_dropped``: occ_id, why (a spooled write can never apply: lease lost...)
    - ``result_confirmed``: occ_id (seen on the standby; gone from the spool)
    - ``spool_changed``: detail = {"pending": n, "uploaded": n}
    - ``heartbeat``: detail = {"state": worker-doc state}
    """

    name: str
    occ_id: str | None = None
    kind: str | None = None
    client: str | None = None
    status: str | None = None
    state: str | None = None
    why: str | None = None
    progress: tuple[float, float, str] | None = None
    detail: dict[str, Any] | None = None


Listener = Callable[[EngineEvent], None]


@dataclass
class Run:
    occ: Occurrence
    leased_at: float  # monotonic time of the last lease write we sent
    started_at: datetime | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = ""
    thread: threading.Thread | None = None
    progress: tuple[float, float, str] | None = None
    claimed_at: str = ""


def default_couch_factory(
    config: WorkerConfig, local_clock: Callable[[], float] | None = None
) -> Couch:
    return Couch(
        config.hub_urls,
        config.name,
        config.password,
        verify=config.verify,
        local_clock=local_clock,
        connect_timeout=3.0,
        read_timeout=15.0,
        retries=2,
        home_db=config.db,
    )


class Engine:
    """One worker: ``start()``, then ``pause``/``resume``/``drain``/``stop``.

    ``couch_factory(config)`` builds the client (default: :func:`default_couch_factory`,
    which also takes ``local_clock``, the PC's wall clock that hub time is offset from);
    ``start_run`` replaces ``desktop_worker.runner.start_run``; ``spool`` replaces the
    SQLite spool at ``config.resolved_spool_path``. For a UI: :meth:`add_listener`,
    :attr:`state`, :attr:`why`, :attr:`current`, :attr:`totals`, :meth:`run_info`,
    :meth:`cancel`.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        couch_factory: Callable[[WorkerConfig], Couch] | None = None,
        local_clock: Callable[[], float] | None = None,
        start_run: Callable[..., Any] | None = None,
        spool: Spool | None = None,
        feed_wait_s: float = 25.0,
        heartbeat_keepalive_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.db = config.db
        self.local_clock = local_clock or time.time
        if couch_factory is None:
            self.couch = default_couch_factory(config, self.local_clock)
        else:
            self.couch = couch_factory(config)
        self._start_run = start_run
        self._spool: Spool | None = spool
        self._spool_given = spool is not None
        self.feed_wait_s = feed_wait_s
        self.heartbeat_keepalive_s = heartbeat_keepalive_s or 2 * config.heartbeat_interval_s
        self.rng = rng or random.Random()
        self.ready_set = ReadySet(self.name, config.tubes, config.kinds)
        self.claimer = Claimer(
            self.couch,
            self.db,
            self.name,
            config.tubes,
            k=config.claim_k,
            kinds=config.kinds,
            rng=random.Random(self.rng.random()),
            ready_set=self.ready_set,
            poll_s=config.poll_interval_s,
        )
        self.claim_stats = ClaimStats()
        self._wake = threading.Event()  # claim loop: something may be claimable
        self._stopping = threading.Event()
        self.feed = ClaimFeed(
            self.couch,
            self.db,
            self.name,
            list(config.tubes),
            self.ready_set,
            wake=self._wake.set,
            stopping=self._stopping,
            stream_s=feed_wait_s * 12,
            longpoll_wait_s=feed_wait_s,
            error_wait_s=config.poll_interval_s,
        )

        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._upload_lock = threading.Lock()
        self._spool_wake = threading.Event()
        self._hb_wake = threading.Event()
        self._stopped = threading.Event()  # set once fully stopped (wait() returns)
        self._stopped.set()
        self._is_stopped = True
        self._shutting_down = False
        self._threads: list[threading.Thread] = []
        self._runs: dict[str, Run] = {}

        self._paused: str | None = None
        self._draining = False
        self._errors: dict[str, str] = {}
        self._offline: str | None = None
        self._state = EngineState.STOPPED
        self._why = ""
        self.totals = {"done": 0, "failed": 0, "lost": 0}
        self.started_at: datetime | None = None

        self._failovers_seen = 0
        self._hb_rev: str | None = None
        self._hb_last = float("-inf")  # monotonic time of the last worker-doc write
        self._hb_server = ""  # the server the last one went to
        self._hb_dirty = True
        self.heartbeats_written = 0
        self._backoffs: dict[str, tuple[float, Backoff | None]] = {}
        self._limits: Any = None
        self._policy: Any = None
        self._doc_kinds: list[str] | None = None

    # ================================================================ observers

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _emit(self, name: str, **fields: Any) -> None:
        event = EngineEvent(name, **fields)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception as exc:  # a broken observer must not break the engine
                log_event("listener_error", LOG_WARNING, listener=repr(listener), error=str(exc))

    # ================================================================ public control

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def why(self) -> str:
        return self._why

    @property
    def current(self) -> list[str]:
        with self._lock:
            return sorted(self._runs)

    @property
    def spool(self) -> Spool | None:
        return self._spool

    def start(self) -> Engine:
        if not self._stopped.is_set():
            return self
        self._stopping.clear()
        self._stopped.clear()
        self._is_stopped = False
        self._shutting_down = False
        self._draining = False
        self.started_at = None
        log_event(
            "worker_start",
            worker=self.name,
            version=__version__,
            hubs=",".join(redact_url(u) for u in self.config.hub_urls),
            db=self.db,
            tubes=",".join(self.config.tubes),
            slots=self.config.slots,
            k=self.config.claim_k,
        )
        self._open_spool()
        self._refresh_state()
        for target, name in (
            (self._main_loop, "claim"),
            (self._watch_loop, "changes"),
            (self._spool_loop, "spool"),
            (self._heartbeat_loop, "heartbeat"),
        ):
            thread = threading.Thread(target=target, name=f"worker-{self.name}-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def pause(self, reason: str = "paused by the user") -> None:
        """Claim nothing more until :meth:`resume`; runs in progress finish."""
        with self._lock:
            self._paused = reason or "paused"
        log_event("worker_pause", worker=self.name, why=reason)
        self._refresh_state()
        self._wake.set()

    def resume(self) -> None:
        with self._lock:
            self._paused = None
        log_event("worker_resume", worker=self.name)
        self._refresh_state()
        self._wake.set()

    def drain(self) -> None:
        """Finish the runs in progress, claim no more, then stop (SIGTERM does this)."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._draining = True
        log_event("worker_drain", worker=self.name, running=len(self._runs))
        self._refresh_state()
        self._wake.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop now: cancel runs in progress and hand their leases back."""
        if self._stopped.is_set():
            return
        self._shutdown(cancel_runs=True, timeout=timeout)

    def cancel(self, occ_id: str, reason: str = "cancelled by the user") -> bool:
        """Stop one run now and hand its lease back (another worker may take it)."""
        with self._lock:
            run = self._runs.get(occ_id)
            if run is None:
                return False
            run.cancel_reason = reason
            run.cancel.set()
        log_event("run_cancel", occ=occ_id, why=reason)
        return True

    def run_info(self, occ_id: str) -> dict[str, Any] | None:
        """What the UI shows for one run; no I/O (hub time from the client's clock offset)."""
        with self._lock:
            run = self._runs.get(occ_id)
            if run is None:
                return None
            occ, progress, started = run.occ, run.progress, run.started_at
        expires = from_wire(occ.lease.expires_at) if occ.lease is not None else None
        now = self.couch.now()
        return {
            "occ_id": occ_id,
            "kind": occ.kind,
            "client": occ.client,
            "started_at": started,
            "expires_at": expires,
            "lease_left_s": (expires - now).total_seconds() if expires else None,
            "progress": progress,
            "attempt": occ.attempt,
            "max_attempts": occ.max_attempts,
        }

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the engine has stopped (after drain() or stop()); True if it has."""
        return self._stopped.wait(timeout)

    # ================================================================ state

    def _refresh_state(self) -> None:
        with self._lock:
            if self._is_stopped:
                state, why = EngineState.STOPPED, ""
            elif self._errors:
                state, why = EngineState.ERROR, "; ".join(self._errors.values())
            elif self._draining:
                state, why = EngineState.DRAINING, f"{len(self._runs)} run(s) to finish"
            elif self._paused:
                state, why = EngineState.PAUSED, self._paused
            elif self._offline:
                state, why = EngineState.OFFLINE, self._offline
            elif self._runs:
                state, why = EngineState.WORKING, ""
            else:
                state, why = EngineState.IDLE, ""
            changed_state = state != self._state
            changed = changed_state or (why != self._why and state != EngineState.WORKING)
            # Only what the hub acts on makes the worker doc worth a write before its
            # keep-alive: running, paused, draining, stopped. Idle <-> working and the
            # totals are not (the hub sees leases on its feed): a write per run cost every
            # fleet one request per occurrence.
            if DOC_STATE.get(state, "running") != DOC_STATE.get(self._state, "running"):
                self._hb_dirty = True
            self._state, self._why = state, why
        if changed:
            log_event("state_changed", worker=self.name, state=state.value, why=why or None)
            self._emit("state_changed", state=state.value, why=why)
            self._hb_wake.set()

    def _set_error(self, source: str, message: str | None) -> None:
        with self._lock:
            if message is None:
                if self._errors.pop(source, None) is None:
                    return
            else:
                if self._errors.get(source) == message:
                    return
                self._errors[source] = message
        if message:
            log_event("worker_error", LOG_WARNING, worker=self.name, source=source, why=message)
        self._refresh_state()

    def _set_offline(self, error: Exception | None) -> None:
        with self._lock:
            if error is None:
                if self._offline is None:
                    return
                self._offline = None
            else:
                if self._offline is not None:
                    return
                self._offline = f"no hub server answers ({error})"
        self._refresh_state()

    def _may_claim(self) -> bool:
        with self._lock:
            return (
                not self._stopping.is_set()
                and not self._draining
                and not self._paused
                and not self._errors
                and len(self._runs) < self.config.slots
            )

    # ================================================================ claim loop

    def _main_loop(self) -> None:
        offline_wait = 1.0
        checked_session = False
        while not self._stopping.is_set():
            self._wake.clear()
            with self._lock:
                drained = self._draining and not self._runs
            if drained:
                threading.Thread(
                    target=self._shutdown, kwargs={"cancel_runs": False}, daemon=True
                ).start()
                return
            if not checked_session:
                checked_session = self._check_session()
                if not checked_session:
                    self._wake.wait(min(offline_wait, self.config.poll_interval_s))
                    offline_wait = min(offline_wait * 2, 15.0)
                    continue
            if self._errors.get("spool"):
                self._retry_spool()
            if self._errors.get("auth"):
                checked_session = False
                self._wake.wait(self.config.poll_interval_s)
                continue
            if not self._may_claim():
                self._wake.wait(self.config.poll_interval_s)
                continue
            free = self.config.slots - len(self._runs)
            try:
                result = self.claimer.claim(free)
            except Unavailable as exc:
                self._set_offline(exc)
                self._wake.wait(offline_wait)
                offline_wait = min(offline_wait * 2, 15.0)
                continue
            except (Unauthorized, Forbidden) as exc:
                self._set_error("auth", f"the hub refused worker {self.name}: {exc.reason}")
                self._wake.wait(self.config.poll_interval_s)
                continue
            except CouchError as exc:
                log_event("claim_error", LOG_WARNING, worker=self.name, error=str(exc))
                self._wake.wait(5.0)
                continue
            offline_wait = 1.0
            self._set_offline(None)
            self._set_error("auth", None)
            self.claim_stats.add(result.stats)
            for occ in result.won:
                self._start_slot(occ)
            if result.won:
                continue
            if result.contended:
                self._wake.wait(self.rng.uniform(0.05, 0.5))
                continue
            timeout = self.config.poll_interval_s
            if result.retry_in is not None:  # a staggered candidate's turn comes
                timeout = min(timeout, result.retry_in + 0.01)
            if result.next_not_before is not None:
                until = (result.next_not_before - self.couch.now()).total_seconds()
                timeout = max(0.005, min(timeout, until + 0.005))
            self._wake.wait(timeout)

    def _check_session(self) -> bool:
        """First request: checks the credentials and samples the server clock."""
        try:
            ctx = self.couch.session().get("userCtx", {})
        except Unavailable as exc:
            self._set_offline(exc)
            return False
        except CouchError as exc:
            self._set_error("auth", f"cannot check the session: {exc}")
            return False
        self._set_offline(None)
        if ctx.get("name") != self.name:
            self._set_error(
                "auth",
                f"the hub did not accept worker {self.name!r}: wrong name or password "
                "(check the keyring entry, password file or COUCHFARM_WORKER_PASSWORD)",
            )
            return False
        self._set_error("auth", None)
        if self.started_at is None:
            self.started_at = self.couch.now()
        fit = self._check_version()  # before the first heartbeat, so it shows the refusal
        self._hb_wake.set()
        return fit

    def _check_version(self) -> bool:
        """Refuse to claim while the hub's ``hub:policy`` asks for a newer worker (the
        claim loop asks again on its back-off, so lowering the minimum needs no restart)."""
        try:
            policy = self.couch.get_or_none(self.db, POLICY_DOC_ID)
        except Unavailable as exc:
            self._set_offline(exc)
            return False
        except CouchError as exc:  # unreadable policy: work as before
            log_event("policy_unreadable", LOG_WARNING, worker=self.name, error=str(exc))
            policy = None
        problem = worker_too_old(__version__, (policy or {}).get("min_worker_version"))
        self._set_error("version", problem)
        return problem is None

    # ================================================================ changes watcher

    def _watch_loop(self) -> None:
        """The changes feed (desktop_worker/feed.py) keeps the ready set current."""
        self.feed.run()

    # ================================================================ runs

    def _runner_args(self) -> tuple[Any, Any, Callable[..., Any]]:
        if self._limits is None:
            from desktop_worker import runner

            self._limits = runner.limits_from_config(self.config)  # incl. CPU/bandwidth caps
            self._policy = runner.Policy(
                allow_private_network=self.config.allow_private_network,
                allowed_kinds=None if self.config.kinds is None else frozenset(self.config.kinds),
                scripts=script_specs(self.config.scripts),
            )
            if self._start_run is None:
                self._start_run = runner.start_run
        assert self._start_run is not None
        return self._limits, self._policy, self._start_run

    def enabled_kinds(self) -> list[str]:
        """The kinds this worker runs (for its worker doc)."""
        try:
            # Not through the runner: importing it (multiprocessing, handlers) costs an idle
            # tray about 1 MB before any run.
            from desktop_worker.handlers import runnable_kinds

            allowed = None if self.config.kinds is None else frozenset(self.config.kinds)
            return runnable_kinds(allowed, bool(self.config.scripts))[:100]
        except Exception:
            return list(self.config.kinds or [])[:100]

    def _start_slot(self, occ: Occurrence) -> None:
        assert occ.lease is not None
        run = Run(occ=occ, leased_at=time.monotonic(), claimed_at=occ.lease.claimed_at)
        with self._lock:
            self._runs[occ.id] = run
        self._refresh_state()
        thread = threading.Thread(
            target=self._run_slot, args=(run,), name=f"worker-{self.name}-run", daemon=True
        )
        run.thread = thread
        thread.start()

    def _run_slot(self, run: Run) -> None:
        occ = run.occ
        status = "error"
        try:
            status = self._supervise(run)
        except Exception as exc:  # never let a slot die silently
            log_event("run_crashed", LOG_WARNING, occ=occ.id, error=repr(exc))
        finally:
            with self._lock:
                self._runs.pop(occ.id, None)
            log_event("run_finished", occ=occ.id, kind=occ.kind, status=status)
            self._emit(
                "run_finished", occ_id=occ.id, kind=occ.kind, client=occ.client, status=status
            )
            self._refresh_state()
            self._wake.set()

    def _supervise(self, run: Run) -> str:
        occ = run.occ
        run.started_at = self.couch.now()
        log_event("run_started", occ=occ.id, kind=occ.kind, attempt=occ.attempt, ttr=occ.ttr)
        self._emit("run_started", occ_id=occ.id, kind=occ.kind, client=occ.client)
        outcome: Any = None
        handle: Any = None
        began = time.monotonic()
        try:
            limits, policy, start_run = self._runner_args()
            # A copy: nothing the runner does may touch the doc we write back (its input is
            # compared field by field, key order included, by validate_doc_update).
            handle = start_run(occ.kind, json.loads(json.dumps(occ.input)), limits, policy)
        except Exception as exc:
            outcome = _Outcome(status="error", error=f"the run could not start: {exc}")
        touch_every = max(0.5, occ.ttr * self.config.touch_at)
        next_touch = run.leased_at + touch_every
        while outcome is None:
            outcome = handle.poll()
            if outcome is not None:
                break
            if run.cancel.is_set():
                handle.cancel(run.cancel_reason or "cancelled")
                return self._release(run)
            progress = _progress_tuple(handle.progress)
            if progress is not None and progress != run.progress:
                run.progress = progress
                self._emit("run_progress", occ_id=occ.id, progress=progress)
            if time.monotonic() >= next_touch:
                verdict = self._touch(run)
                if verdict == "lost":
                    handle.cancel("lease lost")
                    self._count("lost")
                    return "lost"
                if verdict == "ok":
                    next_touch = run.leased_at + touch_every
                else:  # offline: try again soon, the lease may still be ours
                    next_touch = time.monotonic() + min(5.0, touch_every / 2)
            # Poll fast at first (short runs end fast), then at a calmer pace.
            run.cancel.wait(0.05 if time.monotonic() - began < 2.0 else 0.2)
        return self._finish(run, outcome)

    def _touch(self, run: Run) -> str:
        occ = run.occ
        progress = None
        if run.progress is not None:
            num, den, msg = run.progress
            progress = Progress(num=max(0.0, num), den=max(0.0, den), msg=msg[:200])
        try:
            touched = states.touch(occ, self.name, self.couch.now(), progress)
        except (states.InvalidTransition, ValidationError) as exc:
            log_event("touch_invalid", LOG_WARNING, occ=occ.id, error=str(exc))
            return "lost"
        sent = time.monotonic()
        try:
            rev = self.couch.put(self.db, touched.to_doc())
        except Conflict as exc:
            current = self._get_quietly(occ.id) if exc.retried else None
            if current is not None and _same_doc_lease(current, touched):
                run.occ = Occurrence.from_doc(current)
                run.leased_at = sent
                return "ok"
            log_event("lease_lost", LOG_WARNING, occ=occ.id, at="touch", error=exc.reason)
            return "lost"
        except (Forbidden, NotFound) as exc:
            log_event("lease_lost", LOG_WARNING, occ=occ.id, at="touch", error=exc.reason)
            return "lost"
        except Unavailable as exc:
            self._set_offline(exc)
            log_event("touch_offline", occ=occ.id, error=str(exc))
            return "offline"
        except CouchError as exc:
            log_event("touch_error", LOG_WARNING, occ=occ.id, error=str(exc))
            return "offline"
        self._set_offline(None)
        run.occ = touched.model_copy(update={"rev": rev})
        run.leased_at = sent
        assert touched.lease is not None
        log_event("lease_touched", occ=occ.id, expires=touched.lease.expires_at)
        return "ok"

    def _finish(self, run: Run, outcome: Any) -> str:
        occ = run.occ
        now = self.couch.now()
        assert run.started_at is not None
        if outcome.status == "ok":
            try:
                final = states.finish(
                    occ, self.name, now, started_at=run.started_at, output=outcome.output
                )
                op = "finish"
            except ValidationError as exc:
                final = states.fail(
                    occ,
                    self.name,
                    now,
                    error=f"the output was refused: {exc.errors()[0]['msg']}",
                    permanent=True,
                )
                op = "fail"
        else:
            permanent = bool(getattr(outcome, "permanent", False))
            backoff = None
            if not permanent and occ.attempt < occ.max_attempts:
                backoff = self._task_backoff(occ.task)
            final = states.fail(
                occ,
                self.name,
                now,
                error=str(outcome.error or "the run failed")[:2000],
                backoff=backoff,
                permanent=permanent,
                rng=self.rng,
            )
            op = "fail"
        log_event(
            "run_outcome",
            occ=occ.id,
            outcome=outcome.status,
            next_state=final.state.value,
            duration_s=float(getattr(outcome, "duration_s", 0.0) or 0.0),
        )
        return self._deliver(final.to_doc(), op, occ, run.claimed_at)

    def _release(self, run: Run) -> str:
        """A run we cancelled (stop): hand the lease back so another worker may run it."""
        occ = run.occ
        try:
            why = run.cancel_reason or "worker stopped"
            released = states.release(occ, self.name, self.couch.now(), why)
            self.couch.put(self.db, released.to_doc())
        except CouchError as exc:
            log_event("release_failed", occ=occ.id, error=str(exc))
            return "cancelled"
        except states.InvalidTransition:
            return "cancelled"
        log_event("lease_released", occ=occ.id)
        return "released"

    def _task_backoff(self, task: str) -> Backoff | None:
        cached = self._backoffs.get(task)
        if cached is not None and time.monotonic() - cached[0] < 600:
            return cached[1]
        backoff: Backoff | None = None
        try:
            doc = self.couch.get(self.db, task)
            if isinstance(doc.get("backoff"), dict):
                backoff = Backoff.model_validate(doc["backoff"])
        except (CouchError, ValidationError):
            backoff = None
        self._backoffs[task] = (time.monotonic(), backoff)
        return backoff

    def _count(self, what: str) -> None:
        with self._lock:
            self.totals[what] += 1

    # ================================================================ delivery & spool

    def _open_spool(self) -> None:
        if self._spool is not None:
            return
        try:
            self._spool = Spool(self.config.resolved_spool_path)
            self._set_error("spool", None)
        except SpoolError as exc:
            self._set_error("spool", f"the local spool cannot be used: {exc}")

    def _retry_spool(self) -> None:
        try:
            if self._spool is None:
                self._open_spool()
            else:
                self._spool.check()
                self._set_error("spool", None)
        except SpoolError as exc:
            self._set_error("spool", f"the local spool cannot be used: {exc}")

    def _deliver(self, doc: dict[str, Any], op: str, occ: Occurrence, claimed_at: str) -> str:
        """Write-ahead to the spool, then upload everything pending in order."""
        seq: int | None = None
        if self._spool is not None:
            try:
                seq = self._spool.add(
                    doc, op=op, worker=self.name, attempt=occ.attempt, claimed_at=claimed_at
                )
            except SpoolError as exc:
                self._set_error("spool", f"the local spool cannot be written: {exc}")
        if seq is None:  # no spool: send it straight, so a reachable hub still gets it
            status, _ = self._put_final(doc, occ.attempt, claimed_at)
            status = self._account(doc, status)
            return "unsent" if status == "offline" else status
        results = self._upload_pending(own=seq)
        self._emit_spool_counts()
        return results.get(seq, "spooled")

    def _upload_pending(self, own: int | None = None) -> dict[int, str]:
        """Upload pending spool entries in order; stop at the first one no server takes."""
        outcomes: dict[int, str] = {}
        if self._spool is None:
            return outcomes
        with self._upload_lock:
            try:
                entries = self._spool.pending()
            except SpoolError as exc:
                self._set_error("spool", f"the local spool cannot be read: {exc}")
                return outcomes
            for entry in entries:
                status, server_index = self._put_final(entry.doc, entry.attempt, entry.claimed_at)
                try:
                    if status == "offline":
                        self._spool.note_failure(entry.seq, "no server answered")
                        break
                    if status == "ok" and entry.op == "finish" and self.config.has_standby:
                        self._spool.mark_uploaded(entry.seq, server_index or 0)
                    else:
                        self._spool.delete(entry.seq)
                except SpoolError as exc:
                    self._set_error("spool", f"the local spool cannot be written: {exc}")
                word = self._account(entry.doc, status)
                outcomes[entry.seq] = word
                if entry.seq != own:  # written earlier (offline, or before a restart)
                    if status in ("lost", "rejected"):
                        self._emit("result_dropped", occ_id=entry.occ_id, why=word)
                    else:
                        self._emit("result_uploaded", occ_id=entry.occ_id, status=word)
        return outcomes

    def _account(self, doc: dict[str, Any], status: str) -> str:
        """Count a final write's fate in the totals; return the word for it."""
        if status == "ok":
            state = doc.get("state")
            if state == State.DONE.value:
                self._count("done")
                word = "done"
            elif state == State.READY.value:
                word = "released"
            else:
                self._count("failed")
                word = {"scheduled": "retry"}.get(str(state), str(state))
            run = doc.get("result") or {}  # which run was stored: the fault audit needs it
            log_event(
                "result_stored",
                occ=doc["_id"],
                state=state,
                worker=run.get("worker"),
                started_at=run.get("started_at"),
                finished_at=run.get("finished_at"),
            )
            return word
        if status == "lost":
            self._count("lost")
            log_event("result_dropped", LOG_WARNING, occ=doc["_id"], why="lease lost")
        elif status == "rejected":
            log_event("result_dropped", LOG_WARNING, occ=doc["_id"], why="refused by the hub")
        return status

    def _put_final(
        self, doc: dict[str, Any], attempt: int, claimed_at: str
    ) -> tuple[str, int | None]:
        """PUT a finishing doc: ('ok', server index) | ('lost'|'rejected'|'offline', None).

        ``updated_at`` is stamped with hub time at each send: a write that waited in the
        spool is written *now* (validate_doc_update holds it to the server's clock), while
        the result keeps the times the run really started and finished.
        """
        occ_id = str(doc["_id"])
        for try_no in range(2):
            doc = {**doc, "updated_at": _wire(self.couch.now())}  # same key order
            try:
                self.couch.put(self.db, doc)
                self._set_offline(None)
                return "ok", self._active_index()
            except Conflict:
                try:
                    current = self.couch.get_or_none(self.db, occ_id)
                except Unavailable as exc:
                    self._set_offline(exc)
                    return "offline", None
                except CouchError:
                    return "lost", None
                if current is None:
                    if self._archived_as_ours(self.couch, occ_id, doc, attempt):
                        return "ok", self._active_index()
                    return "lost", None
                if _already_applied(current, doc, self.name, attempt):
                    log_event("result_already_stored", occ=occ_id)
                    return "ok", self._active_index()
                lease = current.get("lease") or {}
                if (
                    try_no == 0
                    and claimed_at
                    and current.get("state") == State.LEASED.value
                    and lease.get("worker") == self.name
                    and lease.get("claimed_at") == claimed_at
                    and current.get("attempt") == attempt
                ):
                    # Still our lease (e.g. a touch that reached the server although we
                    # were told it failed): the same write on top of the current revision.
                    doc = {**doc, "_rev": current["_rev"]}
                    continue
                log_event(
                    "lease_lost",
                    LOG_WARNING,
                    occ=occ_id,
                    at="finish",
                    state=current.get("state"),
                    holder=lease.get("worker"),
                )
                return "lost", None
            except Unavailable as exc:
                self._set_offline(exc)
                return "offline", None
            except (Forbidden, BadRequest, Unauthorized, NotFound) as exc:
                log_event("finish_refused", LOG_WARNING, occ=occ_id, error=str(exc))
                return ("lost" if isinstance(exc, Forbidden | NotFound) else "rejected"), None
            except CouchError as exc:
                log_event("finish_error", LOG_WARNING, occ=occ_id, error=str(exc))
                return "offline", None
        return "lost", None

    def _active_index(self) -> int:
        active = self.couch.active
        for index, server in enumerate(self.couch.servers):
            if server is active:
                return index
        return 0

    def _archived_as_ours(
        self, couch: Couch, occ_id: str, doc: dict[str, Any], attempt: int
    ) -> bool:
        found = self._archived_result(couch, occ_id, doc)
        return bool(found and found.get("worker") == self.name and found.get("attempt") == attempt)

    def _archived_result(
        self, couch: Couch, occ_id: str, doc: dict[str, Any]
    ) -> dict[str, Any] | None:
        return archived_result(couch, self.db, occ_id, doc)

    def _emit_spool_counts(self) -> None:
        if self._spool is None:
            return
        try:
            counts = self._spool.counts()
        except SpoolError:
            return
        self._emit("spool_changed", detail=counts)

    def _spool_loop(self) -> None:
        last_check = 0.0
        while not self._stopping.is_set():
            self._spool_wake.wait(self.config.spool_retry_s)
            self._spool_wake.clear()
            if self._stopping.is_set() or self._spool is None:
                continue
            try:
                counts = self._spool.counts()
            except SpoolError as exc:
                self._set_error("spool", f"the local spool cannot be read: {exc}")
                continue
            if counts.get("pending"):
                self._upload_pending()
                self._emit_spool_counts()
            failed_over = self.couch.failovers != self._failovers_seen
            if counts.get("uploaded") and (
                failed_over or time.monotonic() - last_check >= self.config.standby_check_s
            ):
                # Right after a failover too: results the dead server held but never
                # replicated must reach the survivor before their leases expire there.
                self._failovers_seen = self.couch.failovers
                last_check = time.monotonic()
                self._confirm_on_standby()

    def _confirm_on_standby(self) -> None:
        """Settle uploaded results against the other server (see desktop_worker.confirm)."""
        if self._spool is None:
            return
        if Confirmer(self.couch, self.db, self.name, self._spool, self._emit).run():
            self._emit_spool_counts()

    def _get_quietly(self, occ_id: str) -> dict[str, Any] | None:
        try:
            return self.couch.get_or_none(self.db, occ_id)
        except CouchError:
            return None

    # ================================================================ heartbeat

    def _heartbeat_loop(self) -> None:
        """At most one write per interval: sooner after a state change, else a keep-alive."""
        interval = self.config.heartbeat_interval_s
        while not self._stopping.is_set():
            since = time.monotonic() - self._hb_last
            ready = self.started_at is not None
            # After a failover the hub there knows us only from our doc: say we are here
            # now, or its dispatcher offers us nothing until the next keep-alive.
            moved = ready and self._hb_server not in ("", self.couch.active.url)
            if moved or (
                ready
                and since >= interval
                and (self._hb_dirty or since >= self.heartbeat_keepalive_s)
            ):
                self._write_heartbeat()
                continue
            if not ready:
                wait = interval
            elif since < interval:
                wait = interval - since
            else:
                wait = self.heartbeat_keepalive_s - since
            self._hb_wake.wait(max(0.05, min(wait, 1.0)))  # 1 s: notice a failover soon
            self._hb_wake.clear()

    def worker_doc(self) -> dict[str, Any]:
        """The heartbeat's ``worker:{name}`` document, in ``WorkerDoc.to_doc()``'s shape.

        Written as a plain dict, not through the ``WorkerDoc`` model: building a pydantic
        validator the first time costs about 2 MB, and the heartbeat is the only model an
        idle worker would build (docs/TRAY.md, "Numbers"). Every value comes from the
        validated config or the engine itself, cut to ``WorkerDoc``'s limits here; the
        server's ``validate_doc_update`` checks the document on every write, and
        ``tests/test_worker_doc.py`` holds this shape to the model.
        """
        with self._lock:
            state = DOC_STATE.get(self._state, "running")
            current = sorted(self._runs)[:256]
            totals = {key: int(self.totals.get(key, 0)) for key in WORKER_TOTALS}
        now = self.couch.now()
        doc: dict[str, Any] = {"_id": worker_id(self.name)}
        if self._hb_rev:
            doc["_rev"] = self._hb_rev
        doc.update(
            type="worker",
            name=self.name,
            version=__version__[:40],
            os=platform.platform()[:100],
            tubes=list(self.config.tubes),
            kinds=self._kinds_for_doc(),
            slots=self.config.slots,
            state=state,
            last_seen=_wire(now),
            started_at=_wire(self.started_at or now),
            current=current,
            totals=totals,
        )
        return doc

    def _kinds_for_doc(self) -> list[str]:
        if self._doc_kinds is None:
            self._doc_kinds = self.enabled_kinds()
        return self._doc_kinds

    def _write_heartbeat(self) -> bool:
        self._hb_dirty = False
        self._hb_last = time.monotonic()
        self._hb_server = self.couch.active.url
        doc = self.worker_doc()
        try:
            try:
                self._hb_rev = self.couch.put(self.db, doc)
            except Conflict:
                current = self.couch.get_or_none(self.db, doc["_id"])
                doc.pop("_rev", None)
                if current is not None:
                    doc["_rev"] = current["_rev"]
                self._hb_rev = self.couch.put(self.db, doc)
        except Unavailable as exc:
            self._hb_dirty = True
            self._set_offline(exc)
            return False
        except CouchError as exc:
            self._hb_dirty = True
            log_event("heartbeat_failed", LOG_WARNING, worker=self.name, error=str(exc))
            return False
        self.heartbeats_written += 1
        log_event("heartbeat", worker=self.name, state=doc["state"], running=len(doc["current"]))
        self._emit("heartbeat", detail={"state": doc["state"]})
        return True

    # ================================================================ shutdown

    def _shutdown(self, *, cancel_runs: bool, timeout: float = 15.0) -> None:
        with self._lock:
            runs = list(self._runs.values())
            already = self._shutting_down
            self._shutting_down = True
            self._stopping.set()
        if cancel_runs:
            for run in runs:
                run.cancel_reason = "worker stopping"
                run.cancel.set()
        if already:  # another thread is stopping the engine; wait for it
            self._stopped.wait(timeout)
            return
        self._wake.set()
        self._spool_wake.set()
        self._hb_wake.set()
        deadline = time.monotonic() + timeout
        for run in runs:
            if run.thread is not None and run.thread is not threading.current_thread():
                run.thread.join(max(0.1, deadline - time.monotonic()))
        for thread in self._threads:
            if thread is threading.current_thread() or thread.name.endswith("-changes"):
                continue  # a longpoll in flight ends on its own; it only reads
            thread.join(max(0.1, deadline - time.monotonic()))
        if self._spool is not None:
            self._upload_pending()  # last chance for anything still pending
        with self._lock:
            self._threads = []
            self._is_stopped = True
        self._refresh_state()
        if self.started_at is not None:
            self._write_heartbeat()  # 'stopped' is worth one write outside the rate limit
        if self._spool is not None and not self._spool_given:
            self._spool.close()
            self._spool = None
        log_event("worker_stop", worker=self.name, **self.totals)
        self._stopped.set()


# ==================================================================== helpers


@dataclass
class _Outcome:
    """Stands in for runner.Outcome when the run could not even start."""

    status: str
    output: Any = None
    error: str | None = None
    permanent: bool = False
    duration_s: float = 0.0


def script_specs(scripts: dict[str, Any]) -> dict[str, Any]:
    """Config ``scripts`` (name = path, or name = {path, interpreter, args_schema, timeout_s})
    as the runner's ScriptSpec objects."""
    from desktop_worker.handlers import ScriptSpec

    specs: dict[str, Any] = {}
    for name, value in (scripts or {}).items():
        if isinstance(value, ScriptSpec):
            specs[name] = value
        elif isinstance(value, str):
            specs[name] = ScriptSpec(path=value)
        elif isinstance(value, dict):
            data = dict(value)
            if data.get("interpreter") is not None:
                data["interpreter"] = tuple(data["interpreter"])
            specs[name] = ScriptSpec(**data)
        else:
            raise ValueError(f"script {name!r}: give a path or a table with 'path'")
    return specs


def _progress_tuple(value: Any) -> tuple[float, float, str] | None:
    if not value:
        return None
    try:
        num, den, msg = value
        return float(num), float(den), str(msg or "")
    except (TypeError, ValueError):
        return None


def _wire(moment: datetime) -> str:
    from hub.protocol.timefmt import to_wire

    return to_wire(moment)


def _same_doc_lease(current: dict[str, Any], sent: Occurrence) -> bool:
    lease = current.get("lease") or {}
    assert sent.lease is not None
    return (
        current.get("state") == State.LEASED.value
        and lease.get("worker") == sent.lease.worker
        and lease.get("claimed_at") == sent.lease.claimed_at
        and lease.get("expires_at") == sent.lease.expires_at
        and current.get("attempt") == sent.attempt
    )


def _already_applied(
    current: dict[str, Any], sent: dict[str, Any], worker: str, attempt: int
) -> bool:
    """Does the stored doc already carry the write we are trying to make?"""
    if current.get("state") == State.DONE.value and sent.get("state") == State.DONE.value:
        result = current.get("result") or {}
        return result.get("worker") == worker and result.get("attempt") == attempt
    sent_errors = sent.get("errors") or []
    if sent.get("state") != State.DONE.value and sent_errors:
        mine = sent_errors[-1]
        return any(
            record.get("worker") == worker
            and record.get("attempt") == attempt
            and record.get("at") == mine.get("at")
            for record in current.get("errors") or []
        )
    return False


__all__ = ["Engine", "EngineEvent", "EngineState", "Listener", "default_couch_factory"]
