"""The task form: fields generated from each kind's JSON Schema, read back into a task spec,
and the service's problems ('input.url: ...') placed beside the field they name."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hub import schedules
from hub.protocol.kinds import KIND_SCHEMAS
from hub.protocol.model import ALERT_CHANNELS, DEFAULT_PRIORITY, MAX_PRIORITY, Overlap, Task
from hub.protocol.timefmt import to_wire

# One line on each scheduling knob, shown under its field.
EXPLAIN = {
    "priority": f"0 runs first, {MAX_PRIORITY} last; the default {DEFAULT_PRIORITY} runs at its "
    "due time and 0 up to 10 minutes ahead. Low priorities age, so nothing starves.",
    "tube": "The queue this task's runs go to; only workers serving this tube take them.",
    "ttr": "Time to run: seconds a worker may hold a run without reporting before the hub "
    "takes it back.",
    "max_attempts": "Runs before a failing occurrence is buried (waits for a kick).",
    "overlap": "When a run is still going at the next due time: skip the new one, queue it "
    "(all of them), buffer_one (at most one waits), allow both, replace the old one (the new "
    "starts at once), or cancel_other (the old one stops, the new one starts after it).",
    "misfire": "Runs that fell due while nobody could run them: run all, only the latest, "
    "or skip them (each one is recorded, never silently dropped).",
    "misfire_grace": "Seconds a late run may still start before it counts as a misfire.",
    "retention_days": "Days the results are kept.",
    "backoff": "Retry delay: base seconds, multiplied by factor after each failure, at most max.",
    "paused": "A paused task makes no new runs until resumed.",
    "jitter": "Up to this many seconds of random delay, so tasks sharing a time do not all "
    "start at once.",
    "tz": "IANA time zone for cron and local times, e.g. Europe/Amsterdam.",
    "max_runs": "End the task after this many runs, counted from its start (else from when "
    "it was created); empty: no limit.",
    "pause_after_failures": "Pause the task after this many failed runs in a row; empty: "
    "never pause on failure.",
    "alert_after_failures": "Alert after this many failed runs in a row (then once more "
    "when a run succeeds again); empty: no alerts. Channels are set on the Alerts page.",
    "alert_channels": "Which of your alert channels to use; none ticked: every channel you set up.",
    "quorum": "How many different workers run each occurrence (1 to 7). With 2 or more, the "
    "hub keeps the result most of them agree with, and you see every worker's result.",
    "quorum_timeout": "Seconds after a run's start time to wait for every result; empty: "
    "3 times the TTR.",
    "quorum_on_timeout": "When results are still missing then: decide with those in hand (a "
    "strict majority of at least 2), or mark the run inconclusive.",
    "adaptive": "A result from a worker with a long record of agreeing may be accepted "
    "alone, except for random spot checks.",
    "spot_check_rate": "The share of adaptive runs still run by the full quorum (0 to 1).",
    "exclusions": "Windows in which no run is due, one per line, in the time zone above: "
    "'02:00-03:30' every night, '23:00-01:00 sat,sun' on weekends (to before from crosses "
    "midnight), '2026-12-24T00:00 .. 2026-12-27T00:00' once; '# note' at the end. Runs "
    "inside are skipped, not missed.",
}

SCHEDULE_MODES = ("every", "cron", "at")
OVERLAP_CHOICES = tuple(o.value for o in Overlap)
MISFIRE_CHOICES = ("run_latest", "run_all", "skip")
INT_FIELDS = ("priority", "ttr", "max_attempts", "misfire_grace", "retention_days")
OPTIONAL_INT_FIELDS = ("max_runs", "pause_after_failures", "alert_after_failures")  # empty: none
FLOAT_FIELDS = ("backoff.base", "backoff.factor", "backoff.max")
QUORUM_ON_TIMEOUT_CHOICES = ("decide", "fail")
LOCAL_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")


@dataclass
class InputField:
    """One input property of a kind, as the form shows it."""

    kind: str
    prop: str
    label: str
    widget: str  # text, number, select, checkbox, json
    required: bool
    help: str = ""
    options: list[str] = field(default_factory=list)
    integer: bool = False
    placeholder: str = ""

    @property
    def name(self) -> str:
        return f"in:{self.kind}:{self.prop}"

    @property
    def path(self) -> str:
        return f"input.{self.prop}"

    @property
    def dom_id(self) -> str:
        return "f-" + re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.kind}-{self.prop}")


def input_fields(kind: str) -> list[InputField]:
    schema = KIND_SCHEMAS.get(kind, {})
    required = set(schema.get("required", []))
    fields = []
    for prop, spec in schema.get("properties", {}).items():
        spec = spec if isinstance(spec, Mapping) else {}
        kind_of = spec.get("type")
        help_text = str(spec.get("description", ""))
        default = spec.get("default")
        placeholder = "" if default is None else f"default: {json.dumps(default)}"
        if "enum" in spec:
            widget, options = "select", [str(o) for o in spec["enum"]]
        elif kind_of == "string":
            widget, options = "text", []
        elif kind_of in ("integer", "number"):
            widget, options = "number", []
            low, high = spec.get("minimum"), spec.get("maximum")
            if low is not None and high is not None:
                bounds = f"{low} to {high}"
                help_text = f"{help_text} ({bounds})" if help_text else bounds
        elif kind_of == "boolean":
            widget, options = "checkbox", []
        else:
            widget, options = "json", []
            help_text = (help_text + " " if help_text else "") + "(JSON)"
        fields.append(
            InputField(
                kind=kind,
                prop=prop,
                label=str(spec.get("title") or prop.replace("_", " ").capitalize()),
                widget=widget,
                required=prop in required,
                help=help_text,
                options=options,
                integer=kind_of == "integer",
                placeholder=placeholder,
            )
        )
    return fields


def all_input_fields() -> dict[str, list[InputField]]:
    return {kind: input_fields(kind) for kind in sorted(KIND_SCHEMAS)}


# ---------------------------------------------------------------- reading a form


def _number(raw: str, integer: bool) -> Any:
    text = raw.strip()
    try:
        return int(text) if integer else float(text) if ("." in text or "e" in text) else int(text)
    except ValueError:
        return text  # left as text: validation names the field and says what it wanted


def localize(text: str, tz: str) -> str:
    """A time typed without a zone ('2026-12-01T09:00', from datetime-local) in ``tz``;
    times that carry a zone pass through unchanged."""
    text = text.strip()
    if not LOCAL_TIME.match(text):
        return text
    try:
        zone = ZoneInfo(tz) if tz != "UTC" else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")  # schedule.tz gets its own problem
    try:
        return to_wire(datetime.fromisoformat(text).replace(tzinfo=zone))
    except ValueError:
        return text


def localize_schedule(schedule: Mapping[str, Any]) -> dict[str, Any]:
    """``schedule`` with zone-less at/start/end read in its own tz, and ``exclusions``
    given as the form's text read into windows (form and preview only)."""
    out = dict(schedule)
    tz = out.get("tz") if isinstance(out.get("tz"), str) else "UTC"
    for name in ("at", "start", "end"):
        if isinstance(out.get(name), str):
            out[name] = localize(out[name], tz or "UTC")
    if isinstance(out.get("exclusions"), str):
        windows = parse_exclusions(out["exclusions"])
        if windows:
            out["exclusions"] = windows
        else:
            del out["exclusions"]
    return out


ExclusionTextError = schedules.ExclusionTextError
parse_exclusions = schedules.parse_exclusions


def exclusions_text(task: Task) -> str:
    """The task's exclusion windows as the form's text (parse_exclusions reads it back)."""
    lines = []
    for window in task.schedule.exclusions or ():
        line = (
            f"{window.begins}-{window.ends}"
            if window.daily
            else f"{window.begins} .. {window.ends}"
        )
        if window.days:
            line += " " + ",".join(window.days)
        if window.note:
            line += f" # {window.note}"
        lines.append(line)
    return "\n".join(lines)


def schedule_from_form(form: Mapping[str, str]) -> dict[str, Any]:
    mode = form.get("schedule_mode", "every")
    schedule: dict[str, Any] = {}
    if mode == "cron":
        schedule["cron"] = form.get("schedule.cron", "").strip()
    elif mode == "at":
        schedule["at"] = form.get("schedule.at", "").strip()
    else:
        schedule["every"] = _number(form.get("schedule.every", ""), True)
    tz = form.get("schedule.tz", "").strip()
    if tz:
        schedule["tz"] = tz
    for name in ("start", "end"):
        value = form.get(f"schedule.{name}", "").strip()
        if value:
            schedule[name] = value
    jitter = form.get("schedule.jitter", "").strip()
    if jitter:
        schedule["jitter"] = _number(jitter, True)
    exclusions = form.get("schedule.exclusions", "").strip()
    if exclusions:
        schedule["exclusions"] = exclusions
    return localize_schedule(schedule)


def spec_from_form(form: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The task spec a submitted form describes, and problems found while reading it."""
    problems: list[str] = []
    kind = form.get("kind", "").strip()
    spec: dict[str, Any] = {"kind": kind}
    data: dict[str, Any] = {}
    for item in input_fields(kind):
        raw = form.get(item.name)
        if item.widget == "checkbox":
            if raw is not None:
                data[item.prop] = True
            continue
        if raw is None or raw.strip() == "":
            continue
        if item.widget == "number":
            data[item.prop] = _number(raw, item.integer)
        elif item.widget == "json":
            try:
                data[item.prop] = json.loads(raw)
            except ValueError as exc:
                problems.append(f"{item.path}: is not valid JSON ({exc.args[0][:80]})")
        else:
            data[item.prop] = raw.strip() if item.widget == "select" else raw
    spec["input"] = data
    try:
        spec["schedule"] = schedule_from_form(form)
    except ExclusionTextError as exc:
        problems.append(str(exc))
        spec["schedule"] = schedule_from_form({**form, "schedule.exclusions": ""})
    for name in INT_FIELDS:
        raw = form.get(name, "").strip()
        if raw:
            spec[name] = _number(raw, True)
    for name in OPTIONAL_INT_FIELDS:
        raw = form.get(name, "").strip()
        spec[name] = _number(raw, True) if raw else None  # empty clears the limit
    for name in ("tube", "overlap", "misfire"):
        raw = form.get(name, "").strip()
        if raw:
            spec[name] = raw
    backoff = {}
    for name in FLOAT_FIELDS:
        raw = form.get(name, "").strip()
        if raw:
            backoff[name.split(".", 1)[1]] = _number(raw, False)
    if backoff:
        spec["backoff"] = backoff
    channels = [c for c in ALERT_CHANNELS if form.get(f"alert_channel.{c}") is not None]
    spec["alert_channels"] = channels or None  # none ticked: every channel set up
    spec["paused"] = form.get("paused") is not None
    if "quorum" in form:  # the form shows the quorum fields (quorum_supported())
        spec |= quorum_from_form(form)
    return spec, problems


def quorum_supported() -> bool:
    """Whether tasks have the quorum fields (issue 18): the form shows them only then."""
    return "quorum" in Task.model_fields


def quorum_from_form(form: Mapping[str, str]) -> dict[str, Any]:
    """The quorum fields of a submitted form (empty quorum: 1; empty timeout: the default)."""
    spec: dict[str, Any] = {}
    raw = form.get("quorum", "").strip()
    spec["quorum"] = _number(raw, True) if raw else 1
    raw = form.get("quorum_timeout", "").strip()
    spec["quorum_timeout"] = _number(raw, True) if raw else None
    raw = form.get("quorum_on_timeout", "").strip()
    if raw:
        spec["quorum_on_timeout"] = raw
    spec["adaptive"] = form.get("adaptive") is not None
    raw = form.get("spot_check_rate", "").strip()
    if raw:
        spec["spot_check_rate"] = _number(raw, False)
    return spec


def form_from_task(task: Task) -> dict[str, str]:
    """Form values that show an existing task."""
    s = task.schedule
    values: dict[str, str] = {
        "name": task.slug,
        "kind": task.kind,
        "schedule_mode": "every" if s.every is not None else "cron" if s.cron else "at",
        "schedule.every": "" if s.every is None else str(s.every),
        "schedule.cron": s.cron or "",
        "schedule.at": s.at or "",
        "schedule.start": s.start or "",
        "schedule.end": s.end or "",
        "schedule.tz": s.tz,
        "schedule.jitter": str(s.jitter) if s.jitter else "",
        "schedule.exclusions": exclusions_text(task),
        "tube": task.tube,
        "overlap": task.overlap.value,
        "misfire": task.misfire.value,
        "backoff.base": _plain(task.backoff.base),
        "backoff.factor": _plain(task.backoff.factor),
        "backoff.max": _plain(task.backoff.max),
    }
    for name in INT_FIELDS:
        values[name] = str(getattr(task, name))
    for name in OPTIONAL_INT_FIELDS:
        value = getattr(task, name)
        values[name] = "" if value is None else str(value)
    for channel in task.alert_channels or ():
        values[f"alert_channel.{channel}"] = "on"
    if task.paused:
        values["paused"] = "on"
    if quorum_supported():
        values["quorum"] = str(getattr(task, "quorum", 1))
        timeout = getattr(task, "quorum_timeout", None)
        values["quorum_timeout"] = "" if timeout is None else str(timeout)
        values["quorum_on_timeout"] = str(getattr(task, "quorum_on_timeout", "decide"))
        if getattr(task, "adaptive", False):
            values["adaptive"] = "on"
        values["spot_check_rate"] = _plain(getattr(task, "spot_check_rate", 0.1))
    for item in input_fields(task.kind):
        if item.prop not in task.input:
            continue
        value = task.input[item.prop]
        if item.widget == "checkbox":
            if value:
                values[item.name] = "on"
        elif item.widget == "json":
            values[item.name] = json.dumps(value)
        else:
            values[item.name] = str(value)
    return values


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def all_problems(spec: dict[str, Any], first: list[str], now: datetime, min_interval: int):
    """``first`` (the service's answer) plus the input and schedule problems it did not reach.

    The service stops at the task model's own checks before it looks at the input and the
    schedule; a form should show every field at fault in one round trip.
    """
    from pydantic import ValidationError

    from hub import schedules
    from hub.protocol import kinds
    from hub.protocol.model import Schedule, describe_validation_error

    more: list[str] = []
    if spec.get("kind") in KIND_SCHEMAS and isinstance(spec.get("input"), dict):
        more += kinds.validate_input(spec["kind"], spec["input"])
    try:
        schedule = Schedule(**spec.get("schedule", {}))
    except ValidationError as exc:
        more += describe_validation_error(exc, "schedule.")
    else:
        try:
            schedules.validate_schedule(schedule, now, min_interval=min_interval)
        except schedules.ScheduleError as exc:
            more += exc.problems
    return list(dict.fromkeys([*first, *more]))


# ---------------------------------------------------------------- problems beside fields

_QUOTED = re.compile(r"'([^']+)'")
_SCHEDULE_PARTS = ("every", "cron", "at", "start", "end", "tz", "jitter", "exclusions")


def field_of(problem: str) -> str:
    """The form field a problem line names ('' when it names none).

    'input.url: ...' -> 'input.url'; 'input.headers.X: ...' -> 'input.headers';
    "input: missing required field 'url'" -> 'input.url'; 'schedule: at: ...' ->
    'schedule.at'; 'priority: ...' -> 'priority'.
    """
    head, sep, message = problem.partition(": ")
    if not sep or " " in head:
        return ""
    parts = re.split(r"[.\[]", head)
    top = parts[0]
    if top == "input":
        if len(parts) > 1:
            return f"input.{parts[1]}"
        if "missing required field" in message:
            found = _QUOTED.search(message)
            return f"input.{found.group(1)}" if found else "input"
        return "input"
    if top == "schedule":
        if len(parts) > 1 and parts[1] in _SCHEDULE_PARTS:
            return f"schedule.{parts[1]}"
        inner = message.split(":", 1)[0].strip()
        if inner in _SCHEDULE_PARTS:
            return f"schedule.{inner}"
        return "schedule"
    if top == "backoff":
        return f"backoff.{parts[1]}" if len(parts) > 1 else "backoff"
    if top == "name":
        return "slug"
    return top


def problems_by_field(
    problems: list[str], known: set[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """Problems keyed by the field they name; those naming no shown field stay general."""
    placed: dict[str, list[str]] = {}
    general: list[str] = []
    for problem in problems:
        key = field_of(problem)
        if key == "slug":
            key = "name"
        if key in known:
            placed.setdefault(key, []).append(problem)
        else:
            general.append(problem)
    return placed, general
