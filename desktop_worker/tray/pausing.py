"""Why the worker is paused: the user's pauses and the owner's conditions, on one clock.

User pauses (from the tray menu):

- ``hour``: for one hour, then work resumes by itself;
- ``tomorrow``: until the next local midnight, then work resumes by itself;
- ``forever``: until the user chooses Resume. **Never ends by itself**, whatever the clock
  says (tested by jumping the clock weeks ahead).

Conditions (from the settings): run only after N idle minutes, only within the allowed
hours of the weekday, not on battery. Each gives a reason while it holds.

The controller combines them into one pause reason and tells the engine (through the
bridge) only when that reason changes. ``check()`` runs on a coarse timer (15 s by default)
and whenever a test clock jumps; nothing polls faster, so an idle tray costs no CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from desktop_worker.tray.clock import Clock
from desktop_worker.tray.conditions import IdleDetector, Power, power_state, within_hours


class PauseMode(StrEnum):
    HOUR = "hour"
    TOMORROW = "tomorrow"
    FOREVER = "forever"


@dataclass(frozen=True)
class UserPause:
    mode: PauseMode
    since: datetime
    until: datetime | None  # None: until the user resumes

    def reason(self) -> str:
        if self.until is None:
            return "paused by you until you resume"
        if self.mode is PauseMode.TOMORROW:
            return f"paused by you until tomorrow ({self.until:%a %H:%M})"
        return f"paused by you until {self.until:%H:%M}"

    def to_dict(self) -> dict[str, str]:
        out = {"mode": self.mode.value, "since": self.since.isoformat()}
        if self.until is not None:
            out["until"] = self.until.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UserPause | None:
        try:
            until = data.get("until")
            return cls(
                PauseMode(data["mode"]),
                datetime.fromisoformat(data["since"]),
                datetime.fromisoformat(until) if until else None,
            )
        except (KeyError, ValueError, TypeError):
            return None


def next_midnight(now: datetime) -> datetime:
    tomorrow = (now + timedelta(days=1)).date()
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=now.tzinfo)


class PauseController(QObject):
    changed = Signal()  # the combined reason (or the user pause) changed

    def __init__(
        self,
        clock: Clock,
        apply: Callable[[str | None], None],
        settings: Callable[[], Mapping[str, Any]],
        *,
        idle: IdleDetector | None = None,
        power: Callable[[], Power] = power_state,
        persist: Callable[[dict[str, str] | None], None] | None = None,
        tick_ms: int = 15_000,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.clock = clock
        self._apply = apply
        self._settings = settings
        self.idle = idle
        self._power = power
        self._persist = persist
        self.user: UserPause | None = None
        self.conditions: dict[str, str] = {}
        self._applied: str | None = None
        self._applied_once = False
        self.timer = QTimer(self)
        self.timer.setInterval(tick_ms)
        self.timer.timeout.connect(self.check)
        self.timer.start()
        on_jump = getattr(clock, "on_jump", None)
        if callable(on_jump):
            on_jump(self.check)

    # ------------------------------------------------------------ user pauses

    def pause_for_hour(self) -> None:
        now = self.clock.now()
        self._set_user(UserPause(PauseMode.HOUR, now, now + timedelta(hours=1)))

    def pause_until_tomorrow(self) -> None:
        now = self.clock.now()
        self._set_user(UserPause(PauseMode.TOMORROW, now, next_midnight(now)))

    def pause_until_resumed(self) -> None:
        self._set_user(UserPause(PauseMode.FOREVER, self.clock.now(), None))

    def resume(self) -> None:
        self._set_user(None)

    def restore(self, data: Mapping[str, Any] | None) -> None:
        """A pause saved by an earlier run of the app (timed ones may have ended since)."""
        pause = UserPause.from_dict(data) if data else None
        self.user = pause
        self.check(force=True)

    def _set_user(self, pause: UserPause | None) -> None:
        self.user = pause
        if self._persist is not None:
            self._persist(pause.to_dict() if pause else None)
        self.check(force=True)

    # ------------------------------------------------------------ state

    @property
    def snoozed(self) -> bool:
        """A user pause that ends by itself."""
        return self.user is not None and self.user.until is not None

    @property
    def user_paused(self) -> bool:
        return self.user is not None

    def reason(self) -> str | None:
        reasons = []
        if self.user is not None:
            reasons.append(self.user.reason())
        reasons.extend(self.conditions[key] for key in sorted(self.conditions))
        return "; ".join(reasons) or None

    def evaluate_conditions(self) -> dict[str, str]:
        settings = self._settings()
        now = self.clock.now()
        found: dict[str, str] = {}
        idle_minutes = int(settings.get("idle_minutes") or 0)
        if idle_minutes > 0 and self.idle is not None and self.idle.available:
            seconds = self.idle.idle_seconds()
            if seconds is not None and seconds < idle_minutes * 60:
                found["idle"] = (
                    f"the computer is in use (work starts after {idle_minutes} min without input)"
                )
        allowed, rule = within_hours(settings.get("hours") or {}, now)
        if not allowed:
            found["hours"] = f"outside the allowed hours ({rule})"
        if settings.get("pause_on_battery"):
            power = self._power()
            if power.on_battery:  # no percentage: the reason must not change every minute
                found["battery"] = "running on battery"
        return found

    def check(self, force: bool = False) -> None:
        before = (self.user, dict(self.conditions))
        user = self.user
        if user is not None and user.until is not None and self.clock.now() >= user.until:
            self.user = None  # a timed pause ends by itself; "forever" never does
            if self._persist is not None:
                self._persist(None)
        self.conditions = self.evaluate_conditions()
        reason = self.reason()
        if force or not self._applied_once or reason != self._applied:
            self._applied = reason
            self._applied_once = True
            self._apply(reason)
        if force or before != (self.user, self.conditions):
            self.changed.emit()
