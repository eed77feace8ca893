"""desktop_worker.engine_api: the state precedence both engines use, and EngineLike."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from desktop_worker.config import WorkerConfig
from desktop_worker.engine import Engine
from desktop_worker.engine_api import EngineLike, EngineState, derive_state, worth_telling
from desktop_worker.tray.fake import FakeEngine

ORDER = [
    EngineState.STOPPED,
    EngineState.ERROR,
    EngineState.DRAINING,
    EngineState.PAUSED,
    EngineState.OFFLINE,
    EngineState.WORKING,
    EngineState.IDLE,
]


@given(
    stopped=st.booleans(),
    errors=st.dictionaries(st.sampled_from(["auth", "spool", "version"]), st.text(min_size=1)),
    draining=st.booleans(),
    paused=st.none() | st.text(min_size=1),
    offline=st.none() | st.text(min_size=1),
    running=st.integers(0, 4),
)
def test_the_first_condition_that_holds_wins(
    stopped: bool,
    errors: dict[str, str],
    draining: bool,
    paused: str | None,
    offline: str | None,
    running: int,
) -> None:
    holds = {
        EngineState.STOPPED: stopped,
        EngineState.ERROR: bool(errors),
        EngineState.DRAINING: draining,
        EngineState.PAUSED: bool(paused),
        EngineState.OFFLINE: bool(offline),
        EngineState.WORKING: running > 0,
        EngineState.IDLE: True,
    }
    expected = next(state for state in ORDER if holds[state])
    state, why = derive_state(
        stopped=stopped,
        errors=errors,
        draining=draining,
        paused=paused,
        offline=offline,
        running=running,
    )
    assert state == expected
    if state == EngineState.ERROR:
        assert why == "; ".join(errors.values())
    elif state == EngineState.DRAINING:
        assert why == f"{running} run(s) to finish"
    elif state in (EngineState.PAUSED, EngineState.OFFLINE):
        assert why == (paused if state == EngineState.PAUSED else offline)
    else:
        assert why == ""


def test_a_new_reason_is_news_except_while_working() -> None:
    assert worth_telling((EngineState.IDLE, ""), (EngineState.WORKING, ""))
    assert worth_telling((EngineState.PAUSED, "a"), (EngineState.PAUSED, "b"))
    assert not worth_telling((EngineState.PAUSED, "a"), (EngineState.PAUSED, "a"))
    assert not worth_telling((EngineState.WORKING, "x"), (EngineState.WORKING, ""))


def test_the_engine_and_the_fake_are_both_engine_like(tmp_path: Path) -> None:
    config = WorkerConfig(name="w1", hub_urls=["http://127.0.0.1:9"], spool_path=tmp_path / "s")
    assert isinstance(Engine(config), EngineLike)
    assert isinstance(FakeEngine(config), EngineLike)


def test_the_fake_follows_the_same_precedence() -> None:
    fake = FakeEngine().start()
    fake.set_offline("refused")
    assert (fake.state, fake.why) == (EngineState.OFFLINE, "no hub server answers (refused)")
    fake.pause("lunch")
    assert (fake.state, fake.why) == (EngineState.PAUSED, "lunch")
    fake.set_error("auth", "bad password")
    assert (fake.state, fake.why) == (EngineState.ERROR, "bad password")
