"""hub.service (the operations behind the CLI and the portal) and the task CLI."""

from __future__ import annotations

import pytest

from hub import cli
from hub.protocol import states
from hub.protocol.model import Occurrence
from hub.protocol.timefmt import from_wire
from hub.service import ConflictError, FarmService, NotFoundError, ServiceError

EVERY_MINUTE = {"kind": "demo.sleep", "input": {"ms": 10}, "schedule": {"every": 60}}


@pytest.fixture(scope="module")
def service(farm) -> FarmService:
    return FarmService(farm.hub, farm.db)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({**EVERY_MINUTE, "schedule": {"every": 5}}, "min_interval"),
        ({**EVERY_MINUTE, "schedule": {"cron": "61 * * * *"}}, "schedule.cron"),
        ({**EVERY_MINUTE, "schedule": {"every": 60, "tz": "Mars/Olympus"}}, "Mars/Olympus"),
        ({**EVERY_MINUTE, "schedule": {"every": 60, "start": "2030-01-02T00:00:00Z",
                                       "end": "2030-01-01T00:00:00Z"}}, "before start"),
        ({**EVERY_MINUTE, "schedule": {"at": "2001-01-01T00:00:00Z"}}, "schedule.at"),
        ({**EVERY_MINUTE, "schedule": {}}, "exactly one"),
        ({**EVERY_MINUTE, "kind": "no.such"}, "unknown kind"),
        ({**EVERY_MINUTE, "input": {"ms": "long"}}, "input.ms"),
        ({**EVERY_MINUTE, "priority": -1}, "priority"),
        ({**EVERY_MINUTE, "overlap": "sometimes"}, "overlap"),
        ({**EVERY_MINUTE, "colour": "red"}, "colour: unknown field"),
    ],
)  # fmt: skip
def test_bad_tasks_are_refused_with_the_field_named(service, spec, words):
    with pytest.raises(ServiceError) as err:
        service.add_task("acme", "bad", spec)
    assert any(words in problem for problem in err.value.problems), err.value.problems
    assert err.value.status == 400


def test_every_problem_is_reported_at_once(service):
    spec = {**EVERY_MINUTE, "input": {"ms": "x"}, "schedule": {"every": 1, "tz": "Nowhere/X"}}
    with pytest.raises(ServiceError) as err:
        service.add_task("acme", "many", spec)
    assert len(err.value.problems) >= 3


def test_task_life_through_the_service(farm, service):
    task = service.add_task("acme", "life", EVERY_MINUTE)
    with pytest.raises(ConflictError):
        service.add_task("acme", "life", EVERY_MINUTE)
    assert [t.id for t in service.list_tasks("acme")].count(task.id) == 1
    assert service.set_paused("acme", "life", True).paused
    assert not service.set_paused("acme", "life", False).paused
    occ = service.run_now("acme", "life")
    assert occ.state.value == "ready"
    shown = service.occurrence("acme", occ.id)
    assert shown["source"] == "live" and shown["occurrence"]["_id"] == occ.id
    assert service.delete_task("acme", "life") == 1
    assert farm.admin.get(farm.db, occ.id)["state"] == "cancelled"
    with pytest.raises(NotFoundError):
        service.get_task("acme", "life")


def test_other_clients_things_are_not_found(service):
    service.add_task("acme", "private", EVERY_MINUTE)
    occ = service.run_now("acme", "private")
    for call in (
        lambda: service.get_task("globex", "private"),
        lambda: service.get_task("globex", "task:acme:private"),
        lambda: service.occurrence("globex", occ.id),
        lambda: service.run_now("globex", "private"),
        lambda: service.cancel("globex", occ.id),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert all(t.client == "globex" for t in service.list_tasks("globex"))


def test_kick_returns_buried_to_ready(farm, service):
    task = service.add_task("acme", "kickme", {**EVERY_MINUTE, "max_attempts": 1})
    occ = service.run_now("acme", task.slug)
    # run_now stamps not_before with the hub client's clock estimate; this client's may lag.
    now = max(farm.now(), from_wire(occ.not_before))
    w1 = farm.worker("w1")
    claimed = states.claim(occ, "w1", now)
    rev = w1.put(farm.db, claimed.to_doc())
    failed = states.fail(claimed.model_copy(update={"rev": rev}), "w1", now, error="boom")
    w1.put(farm.db, failed.to_doc())
    assert farm.admin.get(farm.db, occ.id)["state"] == "buried"
    assert service.kick("acme", "kickme") == 1
    kicked = Occurrence.from_doc(farm.admin.get(farm.db, occ.id))
    assert kicked.state.value == "ready" and kicked.attempt == 0 and len(kicked.errors) == 1


def test_stats_count_by_state_tube_and_client(service):
    service.add_task("globex", "stat", {**EVERY_MINUTE, "tube": "windows"})
    service.run_now("globex", "stat")
    stats = service.stats()
    assert stats["by_tube"]["windows"]["ready"] >= 1
    assert stats["by_client"]["globex"]["ready"] >= 1
    assert stats["by_state"]["ready"] >= 1


def test_tube_pause_is_recorded(service):
    service.set_tube_paused("windows", True, "maintenance")
    assert service.paused_tubes() == {"windows": "maintenance"}
    service.set_tube_paused("windows", False)
    assert service.paused_tubes() == {}


def test_task_cli_round_trip(farm, monkeypatch, capsys):
    monkeypatch.setenv("COUCHFARM_URL", farm.server.url)
    monkeypatch.setenv("COUCHFARM_USER", "hub")
    monkeypatch.setenv("COUCHFARM_PASSWORD", farm.passwords["hub"])
    monkeypatch.setenv("COUCHFARM_DB", farm.db)
    args = [
        "task",
        "add",
        "--client",
        "acme",
        "--new-client",  # the hub user cannot read _users; alone, acme has no tasks yet
        "--name",
        "cli",
        "--kind",
        "http.check",
        "--input",
        '{"url": "https://example.org/"}',
        "--every",
        "60",
        "--priority",
        "5",
    ]
    assert cli.main(args) == 0
    assert cli.main(["task", "list", "--client", "acme"]) == 0
    assert "task:acme:cli\thttp.check\tevery 60s" in capsys.readouterr().out
    assert cli.main(["task", "run-now", "--client", "acme", "cli"]) == 0
    occ_id = capsys.readouterr().out.split()[-1]
    assert cli.main(["occurrence", "show", occ_id]) == 0
    assert '"state": "ready"' in capsys.readouterr().out
    assert cli.main(["stats"]) == 0
    assert "client acme:" in capsys.readouterr().out
    bad = [
        "task",
        "add",
        "--client",
        "acme",
        "--name",
        "bad",
        "--kind",
        "http.check",
        "--input",
        '{"url": "ftp://x"}',
        "--every",
        "3",
    ]
    assert cli.main(bad) == 2
    err = capsys.readouterr().err
    assert "input.url" in err and "schedule.every" in err
    assert cli.main(["task", "pause", "--client", "acme", "cli"]) == 0
    assert cli.main(["task", "delete", "--client", "acme", "cli"]) == 0


def test_next_fire_times_preview_and_its_errors(service):
    fires = service.next_fire_times({"every": 60}, 3)
    assert len(fires) == 3 and fires == sorted(fires) and fires[0] > service.now().isoformat()
    for spec, words in (
        ({"every": 60, "tz": "Mars/Olympus"}, "schedule.tz"),
        ({}, "exactly one"),
        ({"every": 60, "colour": 1}, "schedule.colour"),
    ):
        with pytest.raises(ServiceError) as err:
            service.next_fire_times(spec, 3)
        assert any(words in problem for problem in err.value.problems), err.value.problems
    with pytest.raises(ServiceError, match="n: "):
        service.next_fire_times({"every": 60}, 1000)


def test_task_health_of_a_task_that_never_failed(service):
    service.add_task("acme", "healthy", {**EVERY_MINUTE, "pause_after_failures": 3})
    health = service.task_health("acme", "healthy")
    assert health["streak"] == 0 and health["pause_after_failures"] == 3
    assert health["paused"] is False and health["paused_reason"] is None
    with pytest.raises(NotFoundError):
        service.task_health("globex", "healthy")


def test_pause_by_hand_keeps_a_note_and_an_update_keeps_it(service):
    service.add_task("acme", "noted", EVERY_MINUTE)
    paused = service.set_paused("acme", "noted", True, reason="migrating the target")
    assert paused.paused_reason == "migrating the target" and paused.paused_at is not None
    edited = service.update_task("acme", "noted", {"priority": 5})
    assert edited.paused and edited.paused_reason == "migrating the target"
    resumed = service.update_task("acme", "noted", {"paused": False})
    assert resumed.paused_reason is None and resumed.paused_at is None
