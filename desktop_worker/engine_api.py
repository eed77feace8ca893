"""What a worker engine looks like from outside: its states, its events, the precedence
that derives its state, and :class:`EngineLike`, the interface the tray drives.

Pure and light (no I/O, no client): the tray's :class:`desktop_worker.tray.fake.FakeEngine`
imports it, and follows the same precedence as the real engine by calling
:func:`derive_state`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class EngineState(StrEnum):
    STOPPED = "stopped"
    IDLE = "idle"  # running, nothing to do
    WORKING = "working"  # at least one run
    PAUSED = "paused"  # claims no more until resume(); current runs finish
    DRAINING = "draining"  # finishes current runs, then stops
    OFFLINE = "offline"  # no server answers
    ERROR = "error"  # cannot work safely (spool unwritable, credentials refused)


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


def derive_state(
    *,
    stopped: bool,
    errors: Mapping[str, str],
    draining: bool,
    paused: str | None,
    offline: str | None,
    running: int,
) -> tuple[EngineState, str]:
    """The engine's state and the reason shown with it, from what it knows.

    Precedence: stopped > error > draining > paused > offline > working > idle. ``errors``
    maps each failing source to its message (all are shown); ``offline`` is the whole
    reason ("no hub server answers (...)"); ``running`` is the number of runs in progress.
    """
    if stopped:
        return EngineState.STOPPED, ""
    if errors:
        return EngineState.ERROR, "; ".join(errors.values())
    if draining:
        return EngineState.DRAINING, f"{running} run(s) to finish"
    if paused:
        return EngineState.PAUSED, paused
    if offline:
        return EngineState.OFFLINE, offline
    if running:
        return EngineState.WORKING, ""
    return EngineState.IDLE, ""


def worth_telling(before: tuple[EngineState, str], after: tuple[EngineState, str]) -> bool:
    """Does going from ``before`` to ``after`` make a ``state_changed`` event? A new state
    does; a new reason does too, except while working (the run count is not news)."""
    return before[0] != after[0] or (before[1] != after[1] and after[0] != EngineState.WORKING)


@runtime_checkable
class EngineLike(Protocol):
    """What the tray (``desktop_worker.tray.bridge``) and the headless CLI drive: the real
    :class:`desktop_worker.engine.Engine` and the tray's ``FakeEngine`` both are one."""

    @property
    def state(self) -> EngineState: ...

    @property
    def why(self) -> str: ...

    @property
    def current(self) -> list[str]: ...

    @property
    def totals(self) -> dict[str, int]: ...

    def add_listener(self, listener: Listener) -> None: ...

    def remove_listener(self, listener: Listener) -> None: ...

    def start(self) -> EngineLike: ...

    def pause(self, reason: str = ...) -> None: ...

    def resume(self) -> None: ...

    def drain(self) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...

    def wait(self, timeout: float | None = ...) -> bool: ...

    def cancel(self, occ_id: str, reason: str = ...) -> bool: ...

    def run_info(self, occ_id: str) -> dict[str, Any] | None: ...


__all__ = [
    "EngineEvent",
    "EngineLike",
    "EngineState",
    "Listener",
    "derive_state",
    "worth_telling",
]
