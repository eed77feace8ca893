"""Runs: one thread per run, from its claim to its finishing write.

Each run's slot thread starts the runner's child (:mod:`desktop_worker.runner`),
supervises it, touches the lease when ``touch_at`` (default 1/2) of the TTR has passed
since the last lease write (carrying progress), and builds the finishing document
(:mod:`hub.protocol.states`), which :class:`desktop_worker.delivery.Delivery` writes. A 409
on a touch means the lease is gone: the child is cancelled and the result dropped
("lost"). A run cancelled by the user or by a stop hands its lease back ("released").
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from desktop_worker import slots
from desktop_worker.config import WorkerConfig
from desktop_worker.delivery import Delivery
from desktop_worker.log import log_event
from desktop_worker.status import EngineStatus
from hub.protocol import quorum, states
from hub.protocol.couch import Conflict, Couch, CouchError, Forbidden, NotFound, Unavailable
from hub.protocol.model import Backoff, Occurrence, Progress, State
from hub.protocol.timefmt import from_wire

LOG_WARNING = logging.WARNING
BACKOFF_CACHE_S = 600  # a task's retry backoff is read again after this long


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


class RunSlots:
    """The runs in progress (kept in ``status.runs``, by occurrence id). ``start_run``
    replaces ``desktop_worker.runner.start_run`` (tests, the tray's capped runner)."""

    def __init__(
        self,
        couch: Couch,
        config: WorkerConfig,
        status: EngineStatus,
        delivery: Delivery,
        *,
        rng: random.Random,
        start_run: Callable[..., Any] | None = None,
    ) -> None:
        self.couch = couch
        self.config = config
        self.db = config.db
        self.name = config.name
        self.status = status
        self.delivery = delivery
        self.rng = rng
        self._start_run = start_run
        self._limits: Any = None
        self._policy: Any = None
        self._backoffs: dict[str, tuple[float, Backoff | None]] = {}

    def cancel(self, occ_id: str, reason: str) -> bool:
        """Stop one run now; its slot hands the lease back."""
        with self.status.lock:
            run = self.status.runs.get(occ_id)
            if run is None:
                return False
            run.cancel_reason = reason
            run.cancel.set()
        log_event("run_cancel", occ=occ_id, why=reason)
        return True

    def join(self, runs: list[Run], deadline: float) -> None:
        """Wait for the slot threads of ``runs`` to end (at most until ``deadline``)."""
        for run in runs:
            if run.thread is not None and run.thread is not threading.current_thread():
                run.thread.join(max(0.1, deadline - time.monotonic()))

    def info(self, occ_id: str) -> dict[str, Any] | None:
        """What the UI shows for one run; no I/O (hub time from the client's clock offset)."""
        with self.status.lock:
            run = self.status.runs.get(occ_id)
            if run is None:
                return None
            occ, progress, started = run.occ, run.progress, run.started_at
        lease = occ.lease or (occ.slots or {}).get(self.name)  # a quorum run: our slot
        expires = from_wire(lease.expires_at) if lease is not None else None
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

    def start(self, occ: Occurrence, leased_at: float | None = None) -> None:
        """``leased_at``: when (monotonic) the lease was written, for a claim held ahead
        (claimloop.py): the first touch is due half a TTR after the claim, not the start."""
        slot = (occ.slots or {}).get(self.name)  # a quorum run: our slot is the lease
        lease = occ.lease or slot
        assert lease is not None
        when = time.monotonic() if leased_at is None else leased_at
        claimed_at = lease.claimed_at
        run = Run(occ=occ, leased_at=when, claimed_at=claimed_at)
        with self.status.lock:
            self.status.runs[occ.id] = run
        self.status.refresh()
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
            with self.status.lock:
                self.status.runs.pop(occ.id, None)
            log_event("run_finished", occ=occ.id, kind=occ.kind, status=status)
            self.status.emit(
                "run_finished", occ_id=occ.id, kind=occ.kind, client=occ.client, status=status
            )
            self.status.refresh()
            self.status.wake.set()

    def _supervise(self, run: Run) -> str:
        occ = run.occ
        run.started_at = self.couch.now()
        log_event("run_started", occ=occ.id, kind=occ.kind, attempt=occ.attempt, ttr=occ.ttr)
        self.status.emit("run_started", occ_id=occ.id, kind=occ.kind, client=occ.client)
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
                self.status.emit("run_progress", occ_id=occ.id, progress=progress)
            if time.monotonic() >= next_touch:
                verdict = self._touch(run)
                if verdict == "lost":
                    handle.cancel("lease lost")
                    self.status.count("lost")
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
        if occ.is_quorum:
            return self._touch_slot(run, progress)
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
            self.status.set_offline(exc)
            log_event("touch_offline", occ=occ.id, error=str(exc))
            return "offline"
        except CouchError as exc:
            log_event("touch_error", LOG_WARNING, occ=occ.id, error=str(exc))
            return "offline"
        self.status.set_offline(None)
        run.occ = touched.model_copy(update={"rev": rev})
        run.leased_at = sent
        assert touched.lease is not None
        log_event("lease_touched", occ=occ.id, expires=touched.lease.expires_at)
        return "ok"

    def _touch_slot(self, run: Run, progress: Progress | None) -> str:
        """A quorum slot's touch (desktop_worker/slots.py): a 409 is another worker's slot
        write, re-applied; only a slot that is gone is a lost lease."""
        sent = time.monotonic()
        try:
            touched = quorum.touch_slot(run.occ, self.name, self.couch.now(), progress)
            verdict, stored = slots.write_slot(self.couch, self.db, touched, self.name,
                                               self.couch.now)  # fmt: skip
        except (states.InvalidTransition, ValidationError) as exc:
            log_event("touch_invalid", LOG_WARNING, occ=run.occ.id, error=str(exc))
            return "lost"
        except Unavailable as exc:
            self.status.set_offline(exc)
            return "offline"
        except CouchError as exc:
            log_event("touch_error", LOG_WARNING, occ=run.occ.id, error=str(exc))
            return "offline"
        if verdict != "ok" or stored is None:
            log_event("lease_lost", LOG_WARNING, occ=run.occ.id, at="touch", slot=True)
            return "lost"
        self.status.set_offline(None)
        run.occ, run.leased_at = stored, sent
        log_event("slot_touched", occ=run.occ.id)
        return "ok"

    def _finish_slot(self, run: Run, outcome: Any) -> str:
        """A quorum slot's result (ok or error: both are results the validator compares),
        delivered through the spool like any finishing write."""
        occ = run.occ
        assert run.started_at is not None
        error = None if outcome.status == "ok" else str(outcome.error or "the run failed")
        try:
            final = quorum.finish_slot(occ, self.name, self.couch.now(),
                                       started_at=run.started_at,
                                       output=outcome.output, error=error)  # fmt: skip
        except ValidationError as exc:
            refused = f"the output was refused: {exc.errors()[0]['msg']}"
            final = quorum.finish_slot(occ, self.name, self.couch.now(),
                                       started_at=run.started_at, error=refused)  # fmt: skip
        except states.InvalidTransition as exc:
            log_event("slot_finish_invalid", LOG_WARNING, occ=occ.id, error=str(exc))
            return "lost"
        log_event("run_outcome", occ=occ.id, outcome=outcome.status, next_state="slot",
                  duration_s=float(getattr(outcome, "duration_s", 0.0) or 0.0))  # fmt: skip
        return self.delivery.deliver(final.to_doc(), "slot", occ, run.claimed_at)

    def _finish(self, run: Run, outcome: Any) -> str:
        occ = run.occ
        if occ.is_quorum:
            return self._finish_slot(run, outcome)
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
        return self.delivery.deliver(final.to_doc(), op, occ, run.claimed_at)

    def _release(self, run: Run) -> str:
        """A run we cancelled (stop): hand the lease back so another worker may run it."""
        occ = run.occ
        if occ.is_quorum:  # void our slot: someone else may take one, we never again
            try:
                voided = quorum.release_slot(occ, self.name, self.couch.now())
                slots.write_slot(self.couch, self.db, voided, self.name, self.couch.now)
            except (CouchError, states.InvalidTransition) as exc:
                log_event("release_failed", occ=occ.id, error=str(exc))
                return "cancelled"
            log_event("lease_released", occ=occ.id, slot=True)
            return "released"
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
        if cached is not None and time.monotonic() - cached[0] < BACKOFF_CACHE_S:
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

    def _get_quietly(self, occ_id: str) -> dict[str, Any] | None:
        try:
            return self.couch.get_or_none(self.db, occ_id)
        except CouchError:
            return None


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


__all__ = ["Run", "RunSlots", "script_specs"]
