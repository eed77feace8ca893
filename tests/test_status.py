"""desktop_worker.status: the engine's shared state, its events and the heartbeat hooks
(pure: no server)."""

from __future__ import annotations

import logging

import pytest

from desktop_worker.engine_api import EngineEvent, EngineState
from desktop_worker.status import EngineStatus


def started(slots: int = 2) -> tuple[EngineStatus, list[EngineEvent], list[str]]:
    status = EngineStatus("w1", slots)
    events: list[EngineEvent] = []
    hooks: list[str] = []
    status.add_listener(events.append)
    status.on_doc_state_change = lambda: hooks.append("doc")
    status.on_change = lambda: hooks.append("change")
    status.is_stopped = False
    status.refresh()
    return status, events, hooks


def test_starting_tells_the_listeners_and_the_heartbeat() -> None:
    status, events, hooks = started()
    assert status.state == EngineState.IDLE
    assert [(e.name, e.state) for e in events] == [("state_changed", "idle")]
    assert hooks == ["doc", "change"]  # stopped -> running: the worker doc must say so


def test_idle_to_working_is_an_event_but_not_worth_a_worker_doc_write() -> None:
    status, events, hooks = started()
    hooks.clear()
    status.runs["occ:1"] = None  # type: ignore[assignment]
    status.refresh()
    assert status.state == EngineState.WORKING and events[-1].state == "working"
    assert hooks == ["change"]


def test_offline_and_errors_are_set_once_and_cleared() -> None:
    status, events, _ = started()
    status.set_offline(ConnectionError("refused"))
    status.set_offline(ConnectionError("still refused"))  # the first reason stays
    assert (status.state, status.why) == (EngineState.OFFLINE, "no hub server answers (refused)")
    status.set_error("auth", "wrong password")
    assert (status.state, status.why) == (EngineState.ERROR, "wrong password")
    status.set_error("auth", None)
    status.set_offline(None)
    assert status.state == EngineState.IDLE
    assert [e.state for e in events] == ["idle", "offline", "error", "offline", "idle"]


def test_may_claim_only_with_a_free_slot_and_nothing_in_the_way() -> None:
    status, _, _ = started(slots=1)
    assert status.may_claim()
    status.runs["occ:1"] = None  # type: ignore[assignment]
    assert not status.may_claim()
    status.runs.clear()
    status.paused = "lunch"
    assert not status.may_claim()
    status.paused = None
    status.stopping.set()
    assert not status.may_claim()


def test_a_broken_listener_does_not_break_the_others(caplog: pytest.LogCaptureFixture) -> None:
    status = EngineStatus("w1", 1)
    heard: list[str] = []

    def broken(event: EngineEvent) -> None:
        raise RuntimeError("boom")

    status.add_listener(broken)
    status.add_listener(lambda event: heard.append(event.name))
    with caplog.at_level(logging.WARNING):
        status.emit("heartbeat", detail={"state": "running"})
    assert heard == ["heartbeat"]
    assert "listener_error" in caplog.text
    status.remove_listener(broken)
    status.count("done")
    assert status.totals == {"done": 1, "failed": 0, "lost": 0}
