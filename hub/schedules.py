"""When a task's schedule falls due: pure date math, no I/O and no clock reads.

Every function takes the moment it reasons about (``now``, ``after``, ``until``) as an
argument, so two hubs given the same schedule and the same window compute the same fire times.
That matters because an occurrence's id embeds its due time: if two hubs disagreed by a
second, they would create two occurrences for one run.

The calendar math comes from APScheduler 3.x triggers (``CronTrigger.from_crontab`` parses
cron and handles DST; ``DateTrigger`` holds a one-off time). Two deliberate departures:

* ``every`` is exact integer arithmetic on an anchor (``start``, else the Unix epoch) rather
  than ``IntervalTrigger``. IntervalTrigger anchors at "now + interval" when it has no start
  (different on every hub) and does its math on float timestamps; the occurrence id needs the
  same answer on every hub, to the microsecond, forever.
* Cron's day-of-week numbers follow crontab (0 and 7 = Sunday, 1-5 = Monday-Friday).
  APScheduler 3.x counts 0 = Monday (its documented "historical mistake", fixed in 4.x), so a
  purely numeric day-of-week item is rewritten as weekday names before APScheduler sees it.
  Everything else in the expression is APScheduler's to parse.

Cron semantics to know (APScheduler's): all five fields must match, including day-of-month
*and* day-of-week (Vixie cron matches either when both are restricted); fields are read in the
schedule's ``tz``; a wall time skipped by a spring-forward change fires once, an hour late, and
a wall time repeated by a fall-back change fires twice (two distinct UTC instants).
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from itertools import islice, pairwise
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from hub.protocol.model import WEEKDAYS, Schedule
from hub.protocol.timefmt import as_utc, from_wire, to_id_stamp

__all__ = [
    "ExclusionTextError",
    "ScheduleError",
    "excluded_fires",
    "fire_times",
    "jitter_offset",
    "limit_runs",
    "max_runs_end",
    "next_fire",
    "next_fire_times",
    "parse_exclusions",
    "preview",
    "validate_schedule",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""Anchor of an ``every`` schedule without ``start``: fixed, so all hubs share one grid."""

CRON_GAP_SAMPLE = 128
"""Fires examined when checking a cron's smallest gap: covers at least two full matching hours
(an hour holds at most 60 fires), so gaps inside an hour and across an hour boundary show."""

_TINY = timedelta(microseconds=1)
_APS_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler 3.x order
_NUMERIC_DOW = re.compile(r"^(?:\*|(?P<first>\d+)(?:-(?P<last>\d+))?)(?:/(?P<step>\d+))?$")
_CRON_HELP = "cron has 5 fields 'min hour dom month dow', e.g. '*/15 9-17 * * 1-5'"


class ScheduleError(ValueError):
    """A schedule that cannot be run, with every reason at once.

    ``problems`` holds one line per problem, each naming the field ("schedule.cron: ...") and
    saying what to change, so a portal or CLI can show them to the client as they are instead
    of making them fix one error per round trip.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self) -> tuple[type[ScheduleError], tuple[list[str]]]:
        # ValueError pickles by re-calling cls(*args) with the joined message; keep the list.
        return (type(self), (self.problems,))


# ---------------------------------------------------------------- compiled schedule


@dataclass(frozen=True, slots=True)
class _Plan:
    """A schedule with its strings parsed once: what the iterators need and nothing more."""

    start: datetime | None
    end: datetime | None
    step: timedelta | None = None  # every
    anchor: datetime | None = None  # every: the fire grid passes through this moment
    cron: CronTrigger | None = None  # cron, without start/end (bounds are set per window)
    at: datetime | None = None  # at
    windows: tuple[_Window, ...] = ()  # exclusions: no fire inside one is a run
    zone: tzinfo = UTC  # the schedule's tz, in which daily windows are read


@dataclass(frozen=True, slots=True)
class _Window:
    """One exclusion, parsed: a daily wall-clock window, or a one-off span of UTC time."""

    begins: time | None = None  # daily: wall clock in the schedule's tz
    ends: time | None = None
    days: frozenset[int] | None = None  # daily: weekday() of the local day it starts on
    since: datetime | None = None  # one-off, UTC
    until: datetime | None = None


def _compile(schedule: Schedule) -> tuple[_Plan | None, list[str]]:
    """Parse the schedule's strings; return the plan, or None and what stops it from running.

    Only problems that make the date math impossible are reported here (unknown zone, bad
    cron, unparsable time); policy checks such as ``min_interval`` live in validate_schedule.
    """
    problems: list[str] = []
    zone = _zone_or_problem(schedule.tz, problems)
    start = _time_or_problem("start", schedule.start, problems)
    end = _time_or_problem("end", schedule.end, problems)
    at = _time_or_problem("at", schedule.at, problems)
    cron: CronTrigger | None = None
    if schedule.cron is not None and zone is not None:
        try:
            cron = CronTrigger.from_crontab(_crontab_to_aps(schedule.cron), timezone=zone)
        except ValueError as exc:
            problems.append(
                f"schedule.cron: {schedule.cron!r} is not a valid cron expression: {exc}; "
                f"{_CRON_HELP}"
            )
    windows = _windows_or_problems(schedule, zone, problems)
    if problems or zone is None:
        return None, problems
    if schedule.every is not None:
        plan = _Plan(start, end, step=timedelta(seconds=schedule.every), anchor=start or EPOCH)
    elif cron is not None:
        plan = _Plan(start, end, cron=cron)
    else:
        assert at is not None  # the model guarantees exactly one of every/cron/at
        # DateTrigger only holds the moment (its get_next_fire_time ignores "now"); the window
        # filtering below is ours.
        plan = _Plan(start, end, at=as_utc(DateTrigger(run_date=at, timezone=UTC).run_date))
    return replace(plan, windows=windows, zone=zone), []


def _windows_or_problems(
    schedule: Schedule, zone: tzinfo | None, problems: list[str]
) -> tuple[_Window, ...]:
    windows: list[_Window] = []
    for index, exclusion in enumerate(schedule.exclusions or ()):
        if exclusion.daily:
            days = None
            if exclusion.days is not None:
                days = frozenset(WEEKDAYS.index(day) for day in exclusion.days)
            windows.append(
                _Window(
                    begins=time.fromisoformat(exclusion.begins),
                    ends=time.fromisoformat(exclusion.ends),
                    days=days,
                )
            )
            continue
        if zone is None:
            continue  # the unknown tz is reported already
        since = _local_moment(exclusion.begins, zone)
        until = _local_moment(exclusion.ends, zone)
        if until <= since:
            problems.append(
                f"schedule.exclusions[{index}].to: {exclusion.ends} is not after from "
                f"{exclusion.begins} (read in {schedule.tz})"
            )
            continue
        windows.append(_Window(since=since, until=until))
    return tuple(windows)


def _local_moment(text: str, zone: tzinfo) -> datetime:
    """A date-time; one without a zone is wall-clock time in ``zone`` (the earlier instant
    of a repeated fall-back time)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def _zone_or_problem(name: str, problems: list[str]) -> tzinfo | None:
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, _zone_names(), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        problems.append(
            f"schedule.tz: unknown time zone {name!r}; {hint}use an IANA name such as "
            "'Europe/Amsterdam', 'America/New_York' or 'UTC'"
        )
        return None


@functools.cache
def _zone_names() -> tuple[str, ...]:
    """All IANA names (read from tzdata once: only needed to suggest a fix for a typo)."""
    return tuple(sorted(available_timezones()))


def _time_or_problem(field: str, text: str | None, problems: list[str]) -> datetime | None:
    if text is None:
        return None
    try:
        return from_wire(text)
    except ValueError as exc:  # the model checks this too; kept for model_construct()ed input
        problems.append(f"schedule.{field}: {exc}")
        return None


def _crontab_to_aps(expr: str) -> str:
    """Rewrite numeric day-of-week items from crontab numbering to weekday names.

    APScheduler 3.x reads day-of-week 0 as Monday; crontab reads 0 (and 7) as Sunday, and that
    is what clients write ('1-5' means Monday to Friday). Items that are not purely numeric
    (names, '*') pass through for APScheduler to parse and to reject.
    """
    fields = expr.split()
    if len(fields) != 5:
        return expr  # let APScheduler say "Wrong number of fields"
    items: list[str] = []
    for item in fields[4].split(","):
        match = _NUMERIC_DOW.match(item)
        if match is None or (item.startswith("*") and match["step"] in (None, "1")):
            items.append(item)
            continue
        first = int(match["first"]) if match["first"] is not None else 0
        last = int(match["last"]) if match["last"] is not None else first
        if match["step"] is not None and (match["first"] is None or match["last"] is None):
            last = 7  # '*/2' and '1/2' run to the end of the week, as in crontab
        step = int(match["step"] or 1)
        if not 0 <= first <= 7 or not 0 <= last <= 7:
            raise ValueError(
                f"day-of-week {item!r} is outside 0-7 (0 and 7 are Sunday, 1 is Monday)"
            )
        if first > last:
            raise ValueError(f"day-of-week range {item!r} runs backwards; write it low-high")
        if step == 0:
            raise ValueError(f"day-of-week step in {item!r} must be at least 1")
        for day in range(first, last + 1, step):
            name = _APS_WEEKDAYS[(day - 1) % 7]  # crontab 0/7=Sunday -> APScheduler 'sun'
            if name not in items:
                items.append(name)
    fields[4] = ",".join(items)
    return " ".join(fields)


def _plan_or_raise(schedule: Schedule) -> _Plan:
    plan, problems = _compile(schedule)
    if plan is None:
        raise ScheduleError(problems)
    return plan


# ---------------------------------------------------------------- fire times


def fire_times(schedule: Schedule, after: datetime, until: datetime) -> Iterator[datetime]:
    """Nominal fire times t with ``after < t <= until``, as aware UTC datetimes, in order.

    The window is half-open on the left so that a hub can walk time in consecutive windows
    (``(a, b]``, ``(b, c]``, ...) and see every fire exactly once, no matter where it cuts.
    ``start`` and ``end`` bound the result (both inclusive). Jitter is not applied: the
    nominal time is the occurrence's identity; see jitter_offset for the delay.

    Raises ScheduleError at call time (not on first iteration) for a schedule whose zone or
    cron cannot be understood, and ValueError for naive datetimes.
    """
    plan = _plan_or_raise(schedule)
    return _fires(plan, as_utc(after), as_utc(until))


def next_fire(schedule: Schedule, after: datetime) -> datetime | None:
    """The first fire strictly after ``after`` (UTC), or None when the schedule has ended."""
    return next(_fires(_plan_or_raise(schedule), as_utc(after), None), None)


def preview(schedule: Schedule, now: datetime, count: int = 5) -> list[datetime]:
    """The next ``count`` fires after ``now`` (UTC): what a client sees before saving a task."""
    if count < 0:
        raise ValueError("count must be zero or more")
    return list(islice(_fires(_plan_or_raise(schedule), as_utc(now), None), count))


MAX_PREVIEW = 100
"""Most fire times one preview lists: the portal's live preview asks on every keystroke."""


def next_fire_times(schedule: Schedule, n: int, after: datetime) -> list[datetime]:
    """The next ``n`` fire times strictly after ``after`` (UTC, in order): the API's and the
    portal's live preview. Raises ScheduleError (naming the field) for a schedule that
    cannot run, and ValueError for ``n`` outside 0..MAX_PREVIEW or a naive ``after``."""
    if not 0 <= n <= MAX_PREVIEW:
        raise ValueError(f"n: {n} is outside 0..{MAX_PREVIEW}")
    return preview(schedule, after, n)


MAX_EXCLUDED_IN_A_ROW = 2000
"""Fires inside exclusion windows skipped in a row before a search gives up (as if the
schedule had ended). Whole windows are jumped over, so a schedule only comes near this
when its windows cover every fire, which validate_schedule refuses."""


def _fires(plan: _Plan, after: datetime, until: datetime | None) -> Iterator[datetime]:
    """Fires in (after, min(until, end)], never before start and never inside an exclusion
    window. ``until=None``: no upper bound."""
    if not plan.windows:
        yield from _rule_fires(plan, after, until)
        return
    skipped = 0
    cursor = after
    while True:
        for fire in _rule_fires(plan, cursor, until):
            window_end = _excluded_until(plan, fire)
            if window_end is None:
                skipped = 0
                yield fire
                continue
            skipped += 1
            if skipped > MAX_EXCLUDED_IN_A_ROW:
                return
            if window_end - _TINY > fire:
                cursor = window_end - _TINY  # jump the rest of the window in one step
                break
        else:
            return


def excluded_fires(schedule: Schedule, after: datetime, until: datetime) -> list[datetime]:
    """The schedule's fires in (after, until] that its exclusion windows remove (at most
    MAX_PREVIEW): what the live preview shows as skipped. Raises ScheduleError."""
    plan = _plan_or_raise(schedule)
    if not plan.windows:
        return []
    found: list[datetime] = []
    for fire in _rule_fires(plan, as_utc(after), as_utc(until)):
        if _excluded_until(plan, fire) is not None:
            found.append(fire)
            if len(found) >= MAX_PREVIEW:
                break
    return found


def _excluded_until(plan: _Plan, fire: datetime) -> datetime | None:
    """The end (UTC) of an exclusion window holding ``fire``, or None when none does.

    Daily windows are wall-clock time in the schedule's zone, so across a DST change they
    last an hour more or less in real time; a wall time that does not exist that night is
    simply never reached. The end returned may be earlier than the real one (never later):
    the caller only uses it to jump ahead, and a jump that falls short costs one more step.
    """
    local: datetime | None = None
    for window in plan.windows:
        if window.since is not None and window.until is not None:
            if window.since <= fire < window.until:
                return window.until
            continue
        assert window.begins is not None and window.ends is not None
        if local is None:
            local = fire.astimezone(plan.zone)
        clock, day = local.time().replace(tzinfo=None), local.date()
        started: date | None = None
        if window.begins < window.ends:
            if window.begins <= clock < window.ends:
                started = day
        elif clock >= window.begins:
            started = day
        elif clock < window.ends:
            started = day - timedelta(days=1)
        if started is None or (window.days is not None and started.weekday() not in window.days):
            continue
        end_day = started if window.begins < window.ends else started + timedelta(days=1)
        wall = datetime.combine(end_day, window.ends)
        return min(wall.replace(tzinfo=plan.zone, fold=fold).astimezone(UTC) for fold in (0, 1))
    return None


def _rule_fires(plan: _Plan, after: datetime, until: datetime | None) -> Iterator[datetime]:
    """The rule's fires in (after, min(until, end)], never before start (no exclusions)."""
    limit = until if plan.end is None else plan.end if until is None else min(until, plan.end)
    if plan.start is not None and after < plan.start:
        after = plan.start - _TINY  # start itself may fire; nothing before it
    if limit is not None and limit <= after:
        return
    if plan.step is not None:
        yield from _every_fires(plan.step, _anchor(plan), after, limit)
    elif plan.cron is not None:
        yield from _cron_fires(plan.cron, after, limit)
    elif plan.at is not None and after < plan.at and (limit is None or plan.at <= limit):
        yield plan.at


def _anchor(plan: _Plan) -> datetime:
    assert plan.anchor is not None
    return plan.anchor


def _first_every_fire_after(step: timedelta, anchor: datetime, after: datetime) -> datetime:
    """The first grid point anchor + k*step strictly after ``after``, in O(1).

    timedelta // timedelta is exact integer floor division (microseconds), so the answer does
    not depend on float rounding or on how far ``after`` is from the anchor.
    """
    k = (after - anchor) // step + 1
    return anchor + k * step


def _every_fires(
    step: timedelta, anchor: datetime, after: datetime, limit: datetime | None
) -> Iterator[datetime]:
    fire = _first_every_fire_after(step, anchor, after)
    while limit is None or fire <= limit:
        yield fire
        fire += step  # aware UTC + timedelta: absolute time, no DST involved


def _cron_fires(
    trigger: CronTrigger, after: datetime, limit: datetime | None
) -> Iterator[datetime]:
    """Ask APScheduler for the next fire at or after ``previous + 1 µs``, repeatedly.

    The bound is handed to the trigger as its end_date so that a cron that never matches
    inside the window (say '0 0 30 2 *') stops at the window's end instead of searching to
    year 9999. Arithmetic is done on UTC values only: adding to a zone-local datetime would
    lose the fold flag and step back an hour during a fall-back change.
    """
    bounded = trigger
    if limit is not None:
        bounded = copy.copy(trigger)  # the caller's trigger stays unbounded
        bounded.end_date = limit
    cursor = after
    while True:
        found = bounded.get_next_fire_time(None, cursor + _TINY)
        if found is None:
            return
        fire = found.astimezone(UTC)
        if fire <= cursor:  # defensive: never repeat or go back, whatever the trigger says
            cursor = cursor + timedelta(seconds=1)
            continue
        if limit is not None and fire > limit:
            return
        yield fire
        cursor = fire


# ---------------------------------------------------------------- max_runs


MAX_WALKED_RUNS = 10_000
"""Largest ``max_runs`` counted fire by fire (cron): about a second of date math."""


def max_runs_end(schedule: Schedule, max_runs: int, created_at: datetime) -> datetime | None:
    """The due time of the ``max_runs``-th fire, counted from the schedule's ``start`` (else
    from ``created_at``, inclusive), or None when the schedule ends before that many fires.

    This is how a task with ``max_runs`` ends without a counter: every hub counts the same
    fires from the same moment and gets the same last fire, which then acts as the task's
    effective ``end``. Raises ScheduleError for a schedule that cannot run.
    """
    if max_runs < 1:
        raise ValueError(f"max_runs: {max_runs} must be at least 1")
    return _max_runs_end(schedule, max_runs, as_utc(created_at))


@functools.lru_cache(maxsize=4096)
def _max_runs_end(schedule: Schedule, max_runs: int, created_at: datetime) -> datetime | None:
    # Cached: the materializer asks at every fire of every limited task, and a cron limit
    # is found by walking its fires one by one.
    plan = _plan_or_raise(schedule)
    first = plan.start or created_at
    counted = plan.step is not None and not plan.windows
    if not counted and max_runs > MAX_WALKED_RUNS:
        raise ScheduleError(
            [
                f"max_runs: {max_runs} is above {MAX_WALKED_RUNS}, the limit for a cron "
                "schedule or one with exclusions (its runs are counted one by one); use an "
                "end time instead, or 'every' without exclusions for a longer series"
            ]
        )
    if counted:
        assert plan.step is not None
        # Exact grid arithmetic: the n-th grid point at or after ``first``.
        nth = _first_every_fire_after(plan.step, _anchor(plan), first - _TINY)
        nth += (max_runs - 1) * plan.step
        return nth if plan.end is None or nth <= plan.end else None
    return next(islice(_fires(plan, first - _TINY, None), max_runs - 1, None), None)


def limit_runs(schedule: Schedule, max_runs: int | None, created_at: datetime) -> Schedule:
    """The schedule with its ``end`` moved to the last fire ``max_runs`` allows (the task's
    effective schedule); unchanged without a limit or when ``end`` comes first."""
    if max_runs is None:
        return schedule
    last = max_runs_end(schedule, max_runs, created_at)
    if last is None:
        return schedule
    return schedule.model_copy(update={"end": _wire(last)})


def _wire(moment: datetime) -> str:
    """Microsecond-exact wire time (an ``every`` grid anchored at an odd start keeps them)."""
    return as_utc(moment).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- exclusions as text


class ExclusionTextError(ValueError):
    """A line of the exclusions text that is not a window; its message names the field."""


_EXCLUSION_LINE = re.compile(
    r"^(?P<begins>\d\d:\d\d|\S+?)\s*(?:\.\.|-(?=\s*\d\d:\d\d\b))\s*(?P<ends>\S+)"
    r"(?:\s+(?P<days>[A-Za-z]{3}(?:\s*,\s*[A-Za-z]{3})*))?\s*(?:#\s*(?P<note>.*))?$"
)


def parse_exclusions(text: str) -> list[dict[str, Any]]:
    """The form's exclusions text, one window per line, as the schedule's ``exclusions``:
    ``02:00-03:30``, ``23:00-01:00 sat,sun``, ``2026-12-24T00:00 .. 2026-12-27T00:00``,
    each optionally followed by ``# note``. Raises ExclusionTextError naming the line."""
    windows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        match = _EXCLUSION_LINE.match(line)
        if match is None:
            raise ExclusionTextError(
                f"schedule.exclusions: line {number} ({line[:60]!r}) is not a window; write "
                "'02:00-03:30', '23:00-01:00 sat,sun' or '2026-12-24T00:00 .. 2026-12-27T00:00'"
            )
        window: dict[str, Any] = {"from": match["begins"], "to": match["ends"]}
        if match["days"]:
            window["days"] = [d.strip().lower() for d in match["days"].split(",")]
        if match["note"]:
            window["note"] = match["note"].strip()
        windows.append(window)
    return windows


# ---------------------------------------------------------------- validation


def validate_schedule(schedule: Schedule, now: datetime, *, min_interval: int = 10) -> None:
    """Raise ScheduleError listing every reason this schedule should not be accepted.

    Beyond what the model checks on its own: the zone exists, the cron parses, end is after
    start, runs are no closer together than the hub's ``min_interval`` (a guard against a
    client flooding the farm), and at least one run falls after ``now`` (a task that can
    never run is almost always a mistake, such as a one-off in the past).
    """
    now = as_utc(now)
    plan, problems = _compile(schedule)
    if schedule.start and schedule.end:
        start, end = _quiet_time(schedule.start), _quiet_time(schedule.end)
        if start is not None and end is not None and end <= start:
            relation = "the same moment as" if end == start else "before"
            problems.append(
                f"schedule.end: {schedule.end} is {relation} start {schedule.start}; "
                "end must be later than start"
            )
    change = "or ask the hub operator to lower the hub setting `min_interval`"
    if schedule.every is not None and schedule.every < min_interval:
        problems.append(
            f"schedule.every: {schedule.every} seconds is below the hub's minimum interval of "
            f"{min_interval} seconds; use every >= {min_interval}, {change}"
        )
    if problems or plan is None:
        raise ScheduleError(problems)

    check_gap = plan.cron is not None and min_interval > 60  # cron fires >= 60 s apart
    upcoming = list(islice(_fires(plan, now, None), CRON_GAP_SAMPLE if check_gap else 1))
    if check_gap:
        gap, first, second = _smallest_gap(upcoming)
        if gap is not None and gap < timedelta(seconds=min_interval):
            problems.append(
                f"schedule.cron: {schedule.cron!r} fires {int(gap.total_seconds())} seconds "
                f"apart (e.g. {_show(first)} and {_show(second)}), below the hub's minimum "
                f"interval of {min_interval} seconds; space the runs further apart, {change}"
            )
    if not upcoming:
        if plan.windows and next(_rule_fires(plan, now, None), None) is not None:
            problems.append(
                "schedule.exclusions: the exclusion windows cover every fire of the schedule "
                f"after now ({_show(now)}), so the task would never run; shorten or remove "
                "a window, or change when the schedule fires"
            )
        else:
            problems.append(_no_future_problem(schedule, plan, now))
    if problems:
        raise ScheduleError(problems)


def _quiet_time(text: str) -> datetime | None:
    try:
        return from_wire(text)
    except ValueError:
        return None  # already reported by _compile


def _smallest_gap(
    fires: list[datetime],
) -> tuple[timedelta | None, datetime | None, datetime | None]:
    best: tuple[timedelta | None, datetime | None, datetime | None] = (None, None, None)
    for earlier, later in pairwise(fires):
        gap = later - earlier
        if best[0] is None or gap < best[0]:
            best = (gap, earlier, later)
    return best


def _no_future_problem(schedule: Schedule, plan: _Plan, now: datetime) -> str:
    """Say *why* nothing is left to run, naming the field most likely to be wrong."""
    if plan.at is not None and plan.at <= now:
        return (
            f"schedule.at: {schedule.at} is not after now ({_show(now)}); "
            "a one-off run needs a time in the future"
        )
    if plan.end is not None and plan.end <= now:
        return (
            f"schedule.end: {schedule.end} is in the past (now is {_show(now)}), so the task "
            "would never run; move end into the future or remove it"
        )
    if plan.at is not None:
        return (
            f"schedule.at: {schedule.at} is outside start {schedule.start or '(none)'} .. "
            f"end {schedule.end or '(none)'}; move it inside or drop start/end"
        )
    if plan.cron is not None and plan.end is None:
        return (
            f"schedule.cron: {schedule.cron!r} never fires after now ({_show(now)}); all five "
            "fields must match together (e.g. day 30 of February never exists)"
        )
    return (
        f"schedule.end: no run falls between now ({_show(now)}) and end {schedule.end}; "
        "move end later (or start earlier)"
    )


def _show(moment: datetime | None) -> str:
    return "?" if moment is None else as_utc(moment).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- jitter


def jitter_offset(task_id: str, due: datetime, jitter: int) -> float:
    """Seconds in ``[0, jitter)`` to delay the run due at ``due``, the same on every hub.

    Jitter spreads tasks that share a due time (every task with ``cron: '0 * * * *'``) so
    workers are not stampeded on the hour. It is derived from a hash of the task and the due
    time (the occurrence's identity, whole seconds as in its id) rather than from a random
    generator, so a standby hub that recomputes the occurrence gets the same not_before.
    """
    if jitter < 0:
        raise ValueError("jitter must be zero or more seconds")
    if jitter == 0:
        return 0.0
    digest = hashlib.blake2b(
        f"{task_id}\x00{to_id_stamp(due)}".encode(), digest_size=8, person=b"couchfarm-jit"
    ).digest()
    unit = (int.from_bytes(digest, "big") >> 11) / 2.0**53  # 53 bits: exactly in [0, 1)
    return min(unit * jitter, math.nextafter(float(jitter), 0.0))
