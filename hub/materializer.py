"""The materializer: turns enabled tasks into occurrences as they fall due.

It keeps an in-memory schedule of every enabled task (a heap ordered by next fire
time), built at start and kept current from the live database's ``_changes`` feed, so a
tick touches only the tasks that are due. It also keeps the active (scheduled, ready,
leased) occurrences per task, which the misfire and overlap policies look at.

:func:`plan_task` is the policy, pure: given a task, the due times that came, what is
still active, and hub time, it says which occurrences to create in which state and
which active ones to supersede. :class:`Materializer` does the bookkeeping and the
bulk writes.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hub import schedules
from hub.protocol import states
from hub.protocol.couch import Conflict, Couch
from hub.protocol.model import (
    ACTIVE_STATES,
    ENDED_REASON_PREFIX,
    SERIAL_OVERLAPS,
    Misfire,
    Occurrence,
    Overlap,
    Schedule,
    State,
    Task,
)
from hub.protocol.timefmt import from_wire, to_wire

log = logging.getLogger("couchfarm.materializer")

FAIR_QUANTUM_SECONDS = 0.05
MAX_DUES_PER_TICK = 10_000  # a task that fell far behind is caught up over several ticks


BACKFILL_REASON = "backfill"
"""Start of the reason of every backfilled occurrence: how the hub tells them apart."""


BACKFILL_SERIAL_REASON = "backfill, one at a time"
"""Start of the reason of a backfilled run that waits for the backfill's previous run."""


def task_schedule(task: Task) -> Schedule:
    """The schedule as the hub runs it: ``max_runs`` applied as its end (docs/SCHEDULES.md)."""
    return schedules.limit_runs(task.schedule, task.max_runs, from_wire(task.created_at))


def ended_reason(task: Task) -> str | None:
    """Why a task with ``max_runs`` has no fire left, or None when it has no such limit."""
    if task.max_runs is None:
        return None
    last = schedules.max_runs_end(task.schedule, task.max_runs, from_wire(task.created_at))
    if last is None:
        return f"{ENDED_REASON_PREFIX}the schedule ended before max_runs={task.max_runs} runs"
    return (
        f"{ENDED_REASON_PREFIX}max_runs={task.max_runs} reached "
        f"(the last run was due {to_wire(last)})"
    )


def is_backfill(occ: Occurrence) -> bool:
    return (occ.reason or "").startswith(BACKFILL_REASON)


def is_serial(occ: Occurrence, task: Task | None) -> bool:
    """Whether ``occ`` may start only when nothing else of its stream runs or waits ready:
    a backfill asked for one at a time, or a scheduled run under a serial overlap policy."""
    if is_backfill(occ):
        return (occ.reason or "").startswith(BACKFILL_SERIAL_REASON)
    return task is not None and task.overlap in SERIAL_OVERLAPS


@dataclass
class Plan:
    creates: list[Occurrence] = field(default_factory=list)
    supersede: list[tuple[Occurrence, str, str]] = field(default_factory=list)  # occ, op, why


PAUSED_AHEAD_REASON = "task paused before this run was due"


def withdrawn_by_pause(task: Task, active: list[Occurrence], now: datetime) -> Plan:
    """A paused task's runs that were written ahead of their due time (``ready``, not yet
    due, so no worker has claimed them) are skipped: a pause reaches every run not yet
    due, not only those the hub had not written yet. Backfilled runs, which a client
    asked for explicitly, are left alone."""
    plan = Plan()
    if not task.paused:
        return plan
    for occ in active:
        if occ.state == State.READY and from_wire(occ.due_at) > now and not is_backfill(occ):
            plan.supersede.append((occ, "skip", PAUSED_AHEAD_REASON))
    return plan


def _apply_misfire(
    task: Task, dues: list[datetime], now: datetime, offsets: list[float], plan: Plan
) -> list[tuple[datetime, float]]:
    """Record the due times the misfire policy gives up as ``missed`` (in ``plan``) and
    return the others, with their fair-share offsets, in due order."""
    grace = timedelta(seconds=task.misfire_grace)
    late = [due for due in dues if due < now - grace]
    on_time = [due for due in dues if due >= now - grace]
    if task.misfire == Misfire.RUN_ALL:
        return list(zip(dues, offsets, strict=True))
    offset_of = dict(zip(dues, offsets, strict=True))
    missed = list(late)
    if task.misfire == Misfire.RUN_LATEST and late and not on_time:
        missed = late[:-1]
        on_time = [late[-1]]
    for due in missed:
        reason = (
            f"misfire: due {due:%Y-%m-%d %H:%M:%S}Z was {int((now - due).total_seconds())} s "
            f"late when materialized (grace {task.misfire_grace} s, policy {task.misfire})"
        )
        plan.creates.append(states.materialize(task, due, now, state=State.MISSED, reason=reason))
    return [(d, offset_of[d]) for d in on_time]


def plan_task(
    task: Task,
    dues: list[datetime],
    now: datetime,
    active: list[Occurrence],
    *,
    fair_offsets: list[float] | None = None,
    ready_until: datetime | None = None,
) -> Plan:
    """Decide the fate of each due time of one task (the policies of DESIGN.md section 5).

    Misfire (a due time older than ``misfire_grace`` when it is materialized, e.g. after
    hub downtime): ``run_all`` runs every one; ``skip`` records each late one ``missed``;
    ``run_latest`` records them ``missed`` except that the newest runs when no on-time
    one exists. Nothing is dropped silently: every due time gets a document.

    Coalescing (a previous occurrence still ``ready``, unclaimed, when a new one falls
    due): with ``run_latest`` or ``skip`` the older one becomes ``missed``; ``run_all``
    keeps both.

    Overlap (a previous occurrence still ``leased`` when a new one falls due): ``skip``
    records the new one ``skipped``; ``queue`` holds it ``scheduled`` until the running
    one ends; ``buffer_one`` does so for one run, and records further fires ``skipped``
    while one waits; ``allow`` runs both; ``replace`` cancels the running one (its worker
    learns on its next write) and runs the new one; ``cancel_other`` cancels it too, and
    holds the new one until the cancelled lease would have expired (the worker has
    stopped by then: it touches before). docs/SCHEDULES.md maps them to Temporal's names.

    ``ready_until`` (materializing ahead): an occurrence whose ``not_before`` is by then is
    written ``ready`` although not yet due; workers hold it and claim it when it is.
    """
    plan = Plan()
    if not dues:
        return plan
    runnable = _apply_misfire(task, dues, now, fair_offsets or [0.0] * len(dues), plan)

    # Backfilled runs are a stream of their own (their own overlap policy, see
    # hub.service.FarmService.backfill): the schedule's policies neither wait for them nor
    # coalesce them.
    active = [o for o in active if not is_backfill(o)]
    leased = [o for o in active if o.state == State.LEASED]
    waiting = [o for o in active if o.state in (State.READY, State.SCHEDULED)]
    # BufferOne keeps the run already waiting behind a running one and drops newer fires;
    # coalescing would instead replace the waiting run by the newest.
    keeps_buffer = task.overlap == Overlap.BUFFER_ONE and bool(leased)
    if runnable and task.misfire != Misfire.RUN_ALL:
        # The newest runnable supersedes older ones that no worker has picked up yet.
        if not keeps_buffer:
            for older in waiting:
                plan.supersede.append(
                    (older, "miss", "coalesced: a newer run fell due before a worker was free")
                )
            waiting = []
        for due, _offset in runnable[:-1]:
            plan.creates.append(
                states.materialize(
                    task,
                    due,
                    now,
                    state=State.MISSED,
                    reason="coalesced: a newer run fell due in the same batch",
                )
            )
        runnable = runnable[-1:]

    buffered: Occurrence | None = waiting[0] if keeps_buffer and waiting else None
    for index, (due, offset) in enumerate(runnable):
        jitter = schedules.jitter_offset(task.id, due, task.schedule.jitter)
        not_before = due + timedelta(seconds=jitter)
        running = bool(leased) or (index > 0 and task.overlap != Overlap.ALLOW)
        if leased and task.overlap == Overlap.SKIP:
            holder = leased[0]
            plan.creates.append(
                states.materialize(
                    task,
                    due,
                    now,
                    state=State.SKIPPED,
                    reason=f"overlap=skip: {holder.id} was still running",
                )
            )
        elif running and task.overlap == Overlap.BUFFER_ONE and buffered is not None:
            plan.creates.append(
                states.materialize(
                    task,
                    due,
                    now,
                    state=State.SKIPPED,
                    reason=f"overlap=buffer_one: {buffered.id} already waits for its turn",
                )
            )
        elif running and task.overlap in (Overlap.QUEUE, Overlap.BUFFER_ONE):
            waiter = states.materialize(
                task,
                due,
                now,
                state=State.SCHEDULED,
                not_before=not_before,
                reason=f"overlap={task.overlap}: waits for the running occurrence to end",
                fair_offset=offset,
            )
            plan.creates.append(waiter)
            buffered = waiter
        elif running and task.overlap == Overlap.CANCEL_OTHER:
            # The cancelled run's worker learns at its next touch, which comes before its
            # lease would expire: starting then means the two runs never overlap.
            for holder in leased:
                why = f"overlap=cancel_other: cancelled for the run due {due:%H:%M:%S}Z"
                plan.supersede.append((holder, "cancel", why))
                if holder.lease is not None:
                    not_before = max(not_before, from_wire(holder.lease.expires_at))
            leased = []
            plan.creates.append(
                states.materialize(
                    task,
                    due,
                    now,
                    state=State.SCHEDULED,
                    not_before=not_before,
                    reason="overlap=cancel_other: starts once the cancelled run has stopped",
                    fair_offset=offset,
                )
            )
        else:
            if leased and task.overlap == Overlap.REPLACE:
                for holder in leased:
                    why = f"overlap=replace: replaced by the run due {due:%H:%M:%S}Z"
                    plan.supersede.append((holder, "cancel", why))
            ready_by = max(now, ready_until or now)
            state = State.READY if not_before <= ready_by else State.SCHEDULED
            plan.creates.append(
                states.materialize(
                    task, due, now, state=state, not_before=not_before, fair_offset=offset
                )
            )
    return plan


@dataclass(order=True)
class _Slot:
    fire_at: datetime
    task_id: str = field(compare=False)
    generation: int = field(compare=False)


class Materializer:
    """In-memory schedule of all enabled tasks, materializing due occurrences in bulk."""

    def __init__(self, couch: Couch, db: str, *, name: str = "hub") -> None:
        self.couch = couch
        self.db = db
        self.name = name
        self.tasks: dict[str, Task] = {}
        self.cursors: dict[str, datetime] = {}
        self.active: dict[str, dict[str, Occurrence]] = defaultdict(dict)
        self._heap: list[_Slot] = []
        self._generation: dict[str, int] = defaultdict(int)
        self._lock = threading.RLock()
        self.created = 0
        self.conflicts = 0
        self.paused_tubes: set[str] = set()
        self._ending: set[str] = set()  # tasks whose max_runs is used up, to mark ended
        self.ended = 0

    # ------------------------------------------------------------ loading

    def load(self, now: datetime) -> None:
        """Read every task, each task's last materialized due time, and active occurrences."""
        rows = self.couch.all_docs(
            self.db, startkey="task:", endkey="task:\ufff0", include_docs=True
        )
        last = self.couch.view(self.db, "farm", "last_by_task", group=True)["rows"]
        active_rows = self.couch.view(self.db, "farm", "active_by_task", include_docs=True)["rows"]
        with self._lock:
            for row in last:
                self.cursors[row["key"]] = datetime.fromtimestamp(row["value"]["max"], UTC)
            for row in active_rows:
                self._track(row["doc"])
            for row in rows:
                if row.get("doc"):
                    self._set_task(Task.from_doc(row["doc"]), now)

    def apply_changes(self, results: Iterable[dict[str, Any]], now: datetime) -> None:
        """Keep the schedule and the active index current from ``_changes`` rows."""
        with self._lock:
            for row in results:
                doc_id = row.get("id", "")
                doc = row.get("doc")
                if doc_id.startswith("task:"):
                    if row.get("deleted") or doc is None or doc.get("_deleted"):
                        self._drop_task(doc_id)
                    else:
                        self._set_task(Task.from_doc(doc), now)
                elif doc_id.startswith("occ:") and doc is not None:
                    if row.get("deleted") or doc.get("_deleted"):
                        self._untrack(doc_id, doc.get("task"))
                    else:
                        self._track(doc)

    def _track(self, doc: dict[str, Any]) -> None:
        try:
            occ = Occurrence.from_doc(doc)
        except ValueError:
            log.warning("event=bad_occurrence occ=%s", doc.get("_id"))
            return
        if occ.state in ACTIVE_STATES:
            self.active[occ.task][occ.id] = occ
        else:
            self.active[occ.task].pop(occ.id, None)
        due = from_wire(occ.due_at)
        if due > self.cursors.get(occ.task, due - timedelta(seconds=1)):
            self.cursors[occ.task] = due

    def next_reap_due(self) -> datetime | None:
        """The earliest moment the reaper has work, as far as the followed changes show:
        a lease's expiry or a retry's ``not_before``. None: nothing leased or waiting."""
        with self._lock:
            moments = [
                from_wire(occ.lease.expires_at)
                if occ.state == State.LEASED and occ.lease is not None
                else from_wire(occ.not_before)
                for bucket in self.active.values()
                for occ in bucket.values()
                if occ.state in (State.LEASED, State.SCHEDULED)
            ]
        return min(moments, default=None)

    def _untrack(self, occ_id: str, task: str | None) -> None:
        for bucket in [self.active[task]] if task else self.active.values():
            bucket.pop(occ_id, None)

    def _set_task(self, task: Task, now: datetime) -> None:
        old = self.tasks.get(task.id)
        self.tasks[task.id] = task
        if (
            old is not None
            and old.schedule == task.schedule
            and old.paused == task.paused
            and old.max_runs == task.max_runs
        ):
            return  # nothing that moves its next fire changed
        self._generation[task.id] += 1
        if task.id not in self.cursors:
            # A task with no occurrence yet starts at its creation: fires from then on are
            # due (so one created while the hub was down still gets its misfire policy).
            self.cursors[task.id] = from_wire(task.created_at) - timedelta(microseconds=1)
        if task.paused:
            return
        if old is not None and old.paused:
            # A paused task's runs were not due: resume from now, not from before the pause.
            self.cursors[task.id] = max(self.cursors.get(task.id, now), now)
        self._schedule_next(task.id, now)

    def _drop_task(self, task_id: str) -> None:
        self.tasks.pop(task_id, None)
        self._generation[task_id] += 1

    def _schedule_next(self, task_id: str, now: datetime) -> None:
        task = self.tasks[task_id]
        fire = schedules.next_fire(task_schedule(task), self.cursors[task_id])
        if fire is not None:
            heapq.heappush(self._heap, _Slot(fire, task_id, self._generation[task_id]))
        elif task.max_runs is not None and not task.paused:
            self._ending.add(task_id)

    def mark_ended(self, now: datetime) -> int:
        """Pause the tasks whose ``max_runs`` is used up, with the reason naming the limit.

        Both hubs may do it: each writes over the revision it read, and one that finds the
        task already paused (or its limit raised) leaves it alone.
        """
        with self._lock:
            ending, self._ending = self._ending, set()
        marked = 0
        for task_id in sorted(ending):
            task_now = self.tasks.get(task_id)
            last = None if task_now is None else self._last_run_due(task_now)
            if last is not None and last > now:
                # The last run was written ahead of its due time: ending the task now
                # would pause it, and a pause withdraws runs not yet due (withdrawn_by_pause).
                with self._lock:
                    self._ending.add(task_id)
                continue
            for _ in range(3):
                doc = self.couch.get_or_none(self.db, task_id)
                if doc is None:
                    break
                task = Task.from_doc(doc)
                if task.paused or task.max_runs is None:
                    break
                if schedules.next_fire(task_schedule(task), self.cursors.get(task_id, now)):
                    break  # the limit was raised meanwhile
                stamp = to_wire(now)
                reason = ended_reason(task)
                ended = task.model_copy(
                    update={"paused": True, "paused_reason": reason, "paused_at": stamp,
                            "updated_at": stamp}
                )  # fmt: skip
                try:
                    self.couch.put(self.db, ended.to_doc())
                except Conflict:
                    continue
                marked += 1
                log.info("event=task_ended task=%s reason=%r", task_id, reason)
                break
        self.ended += marked
        return marked

    @staticmethod
    def _last_run_due(task: Task) -> datetime | None:
        if task.max_runs is None:
            return None
        try:
            return schedules.max_runs_end(task.schedule, task.max_runs, from_wire(task.created_at))
        except schedules.ScheduleError:
            return None

    # ------------------------------------------------------------ ticking

    def has_running(self, task_id: str) -> bool:
        with self._lock:
            return any(o.state == State.LEASED for o in self.active.get(task_id, {}).values())

    def stream_busy(self, occ: Occurrence) -> bool:
        """Something of ``occ``'s stream (its task's scheduled runs, or its task's
        backfill) is leased or ready: a serial run waits (see :func:`is_serial`)."""
        backfill = is_backfill(occ)
        with self._lock:
            return any(
                other.state in (State.LEASED, State.READY) and is_backfill(other) == backfill
                for other in self.active.get(occ.task, {}).values()
                if other.id != occ.id
            )

    def _discard_stale(self) -> None:
        while self._heap and self._heap[0].generation != self._generation[self._heap[0].task_id]:
            heapq.heappop(self._heap)

    def tick(self, now: datetime, ahead: tuple[float, float] | None = None) -> int:
        """Create every occurrence due by ``now``. Returns how many were created.

        ``ahead=(trigger_s, window_s)``: once a fire is within ``trigger_s``, also create
        the next fire of every task due within ``window_s`` that has nothing active (so
        no overlap or coalescing decision is taken early), ``ready`` with ``not_before``
        at its due time. One bulk write then covers a window of fires, and workers hold
        each occurrence before it is due. A pause or edit reaches runs due after it.
        """
        with self._lock:
            horizon = now
            self._discard_stale()
            if ahead and self._heap and self._heap[0].fire_at <= now + timedelta(seconds=ahead[0]):
                horizon = now + timedelta(seconds=ahead[1])
            due_tasks: list[tuple[str, bool]] = []
            deferred: list[_Slot] = []
            while True:
                self._discard_stale()
                if not self._heap or self._heap[0].fire_at > horizon:
                    break
                slot = heapq.heappop(self._heap)
                if slot.task_id not in self.tasks:
                    continue
                early = slot.fire_at > now
                if early and any(self.active.get(slot.task_id, {}).values()):
                    deferred.append(slot)  # its fate depends on what runs at its due time
                    continue
                due_tasks.append((slot.task_id, early))
            for slot in deferred:
                heapq.heappush(self._heap, slot)
            plans: list[tuple[str, list[datetime], Plan]] = []
            for task_id, bucket in self.active.items():
                task_or_none = self.tasks.get(task_id)
                if task_or_none is not None and task_or_none.paused and bucket:
                    withdrawn = withdrawn_by_pause(task_or_none, list(bucket.values()), now)
                    if withdrawn.supersede:
                        plans.append((task_id, [], withdrawn))
            rank: dict[tuple[str, str], int] = defaultdict(int)
            for task_id, early in due_tasks:
                task = self.tasks[task_id]
                after = self.cursors[task_id]
                dues = []
                fires = schedules.fire_times(task_schedule(task), after, horizon if early else now)
                for due in fires:
                    dues.append(due)
                    if early or len(dues) >= MAX_DUES_PER_TICK:
                        break  # ahead of time: one fire, its successor waits its turn
                offsets = []
                for _ in dues:
                    key = (task.client, task.tube)
                    offsets.append(rank[key] * FAIR_QUANTUM_SECONDS)
                    rank[key] += 1
                active = list(self.active.get(task_id, {}).values())
                plan = plan_task(
                    task, dues, now, active, fair_offsets=offsets,
                    ready_until=horizon if early else None,
                )  # fmt: skip
                plans.append((task_id, dues, plan))
        created = self._write(plans, now)
        with self._lock:
            for task_id, dues, _plan in plans:
                if dues:
                    self.cursors[task_id] = max(dues[-1], self.cursors.get(task_id, dues[-1]))
                if task_id in self.tasks and not self.tasks[task_id].paused:
                    self._schedule_next(task_id, now)
        if self._ending:
            self.mark_ended(now)
        return created

    def _cancel_again(self, occ_id: str, why: str, now: datetime) -> None:
        """A cancel (replace, cancel_other) that lost the race with the worker's touch:
        read the new revision and cancel that, so the policy still holds."""
        for _ in range(3):
            doc = self.couch.get_or_none(self.db, occ_id)
            if doc is None or doc.get("state") not in (State.LEASED, State.READY):
                return  # ended meanwhile: nothing to cancel
            cancelled = states.cancel(Occurrence.from_doc(doc), now, why)
            row = self.couch.bulk_docs(self.db, [cancelled.to_doc()])[0]
            if "rev" in row:
                self._track({**cancelled.to_doc(), "_rev": row["rev"]})
                log.info("event=occurrence_cancelled_again occ=%s", occ_id)
                return
        log.warning("event=cancel_lost_race occ=%s", occ_id)

    def _write(self, plans: list[tuple[str, list[datetime], Plan]], now: datetime) -> int:
        docs: list[dict[str, Any]] = []
        models: dict[str, Occurrence] = {}
        for _task_id, _dues, plan in plans:
            for occ in plan.creates:
                if occ.state == State.READY and occ.tube in self.paused_tubes:
                    # Held until the tube resumes; the reaper promotes it then.
                    occ = occ.model_copy(
                        update={"state": State.SCHEDULED, "reason": f"tube {occ.tube} paused"}
                    )
                docs.append(occ.to_doc())
                models[occ.id] = occ
            for occ, op, why in plan.supersede:
                supersede = {"miss": states.miss, "skip": states.skip}.get(op, states.cancel)
                changed = supersede(occ, now, why)
                docs.append(changed.to_doc())
                models[changed.id] = changed
        if not docs:
            return 0
        rows = self.couch.bulk_docs(self.db, docs)
        cancels = {occ.id: why for _t, _d, plan in plans for occ, op, why in plan.supersede
                   if op == "cancel"}  # fmt: skip
        for row in rows:
            if row.get("error") == "conflict" and row["id"] in cancels:
                self._cancel_again(row["id"], cancels[row["id"]], now)
        created = 0
        with self._lock:
            for row in rows:
                written = models.get(row["id"])
                if written is None:
                    continue
                if "rev" in row:
                    created += written.rev is None
                    self._track({**written.to_doc(), "_rev": row["rev"]})
                    log.info(
                        "event=occurrence_written occ=%s state=%s", written.id, written.state.value
                    )
                elif row.get("error") == "conflict":
                    # Another hub created it first, or a worker changed it: both are fine.
                    self.conflicts += 1
                else:
                    log.error(
                        "event=occurrence_write_failed occ=%s error=%s reason=%s",
                        written.id,
                        row.get("error"),
                        row.get("reason"),
                    )
        self.created += created
        return created
