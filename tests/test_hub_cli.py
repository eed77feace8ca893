"""The ``hub`` command as a newcomer meets it (issue 19): help that names every option and
setting, ids it prints accepted back, readable output, clear refusals, a quiet stderr."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import cli, replication
from hub.protocol.kinds import KIND_SCHEMAS

REPO = Path(__file__).resolve().parent.parent
CONNECTION_VARIABLES = ("COUCHFARM_URL", "COUCHFARM_USER", "COUCHFARM_PASSWORD")


def _parsers(
    parser: argparse.ArgumentParser, path: str = "hub"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_every_option_of_every_subcommand_has_help_text():
    undocumented = [
        f"{path} {'/'.join(action.option_strings) or action.dest}"
        for path, parser in _parsers(cli.build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert undocumented == []
    commands = [path for path, _ in _parsers(cli.build_parser())]
    assert "hub task add" in commands and "hub tallies rebuild" in commands  # the walk works


def test_task_add_lists_the_valid_kinds(capsys):
    with pytest.raises(SystemExit):
        cli.main(["task", "add", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(kind in text for kind in KIND_SCHEMAS), text


def test_hub_help_names_the_connection_settings_and_where_the_command_is(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in (*CONNECTION_VARIABLES, "COUCHFARM_PASSWORD_FILE"))
    assert ".venv/bin/hub" in text


@pytest.fixture
def as_hub(farm, monkeypatch) -> None:
    for name in ("COUCHDB_USER", "COUCHDB_PASSWORD", "COUCHFARM_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COUCHFARM_URL", farm.server.url)
    monkeypatch.setenv("COUCHFARM_USER", "hub")
    monkeypatch.setenv("COUCHFARM_PASSWORD", farm.passwords["hub"])
    monkeypatch.setenv("COUCHFARM_DB", farm.db)


def _add(slug: str, client: str = "acme", *extra: str) -> list[str]:
    return ["task", "add", "--client", client, "--name", slug, "--kind", "demo.sleep",
            "--input", '{"ms": 1}', "--every", "60", *extra]  # fmt: skip


def test_with_only_the_url_set_a_401_says_what_is_missing(farm, as_hub, monkeypatch, capsys):
    monkeypatch.delenv("COUCHFARM_USER")
    monkeypatch.delenv("COUCHFARM_PASSWORD")
    assert cli.main(["stats"]) == 1
    err = capsys.readouterr().err
    assert "401" in err and "no user (set COUCHFARM_USER" in err, err
    assert "no password (set COUCHFARM_PASSWORD" in err, err


def test_task_commands_take_the_ids_task_list_prints(farm, as_hub, capsys):
    assert cli.main([*_add("byid", "acme", "--new-client")]) == 0
    capsys.readouterr()
    assert cli.main(["task", "list"]) == 0
    [listed] = [
        line.split("\t")[0] for line in capsys.readouterr().out.splitlines() if "byid" in line
    ]
    assert listed == "task:acme:byid"
    assert cli.main(["task", "show", listed]) == 0
    shown = capsys.readouterr().out
    assert "_rev" not in shown and "{" not in shown.split("input")[0]
    assert "task          task:acme:byid" in shown and "every 60" in shown, shown
    assert cli.main(["task", "show", "--json", listed]) == 0
    assert '"_rev"' in capsys.readouterr().out  # the raw document, on request
    assert cli.main(["task", "pause", listed]) == 0
    assert farm.hub.get(farm.db, listed)["paused"] is True
    assert cli.main(["task", "run-now", listed]) == 0
    assert cli.main(["task", "delete", listed]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("deleted task:acme:byid;")
    assert farm.hub.get_or_none(farm.db, listed) is None


def test_a_slug_without_a_client_or_an_id_of_another_client_is_refused(farm, as_hub, capsys):
    assert cli.main(["task", "show", "heartbeat"]) == 2
    assert "task:CLIENT:heartbeat" in capsys.readouterr().err
    assert cli.main(["task", "show", "--client", "globex", "task:acme:x"]) == 2
    assert "belongs to client 'acme'" in capsys.readouterr().err


def test_task_add_refuses_a_client_that_does_not_exist(farm, as_hub, monkeypatch, capsys):
    # The hub user cannot look users up: an unknown client with no tasks is refused...
    assert cli.main(_add("orphan", "nobody")) == 2
    err = capsys.readouterr().err
    assert "--client nobody" in err and "COUCHDB_USER" in err and "--new-client" in err
    # ...and with a server admin at hand, the answer is definite either way.
    monkeypatch.setenv("COUCHDB_USER", farm.server.admin_user)
    monkeypatch.setenv("COUCHDB_PASSWORD", farm.server.admin_password)
    assert cli.main(_add("orphan", "nobody")) == 2
    assert "no such client; create it first with `hub client add nobody`" in (
        capsys.readouterr().err
    )
    assert cli.main(_add("worker-owned", "w1")) == 2
    assert "'w1' is not a client" in capsys.readouterr().err
    assert cli.main(_add("known", "globex")) == 0
    assert farm.hub.get_or_none(farm.db, "task:nobody:orphan") is None


def test_a_successful_command_prints_no_log_line_on_stderr(farm):
    env = {
        **os.environ,
        "COUCHFARM_URL": farm.server.url,
        "COUCHFARM_USER": "hub",
        "COUCHFARM_PASSWORD": farm.passwords["hub"],
        "COUCHFARM_DB": farm.db,
        "PYTHONPATH": str(REPO),
    }
    for argv in (_add("quiet", "acme", "--new-client"), ["task", "pause", "task:acme:quiet"]):
        run = subprocess.run([sys.executable, "-m", "hub.cli", *argv], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0 and run.stdout.strip(), run
        assert run.stderr == "", run.stderr


def test_stats_labels_the_worker_columns(farm, as_hub, capsys):
    stamp = farm.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
    worker = farm.worker("w3")
    worker.put(farm.db, {"_id": "worker:w3", "type": "worker", "name": "w3",
                         "state": "running", "version": "0.1.0", "current": [],
                         "last_seen": stamp, "slots": 1, "tubes": ["default"],
                         "kinds": ["demo.sleep"]})  # fmt: skip
    assert cli.main(["stats"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "WORKER" in line)
    assert header.split() == ["WORKER", "STATE", "VERSION", "RUNS", "NOW", "LAST", "SEEN"]
    [row] = [line for line in lines if line.split()[:1] == ["w3"]]
    assert row.split()[:4] == ["w3", "running", "0.1.0", "0"]


def test_stats_shows_the_replications_state_with_a_server_admin(
    farm_on_both, passwords, monkeypatch, capsys
):
    db, primary, standby = farm_on_both("cli_stats")
    replication.setup(primary, standby, db)
    for name in ("COUCHFARM_PASSWORD_FILE",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COUCHFARM_URL", f"{primary.url},{standby.url}")
    monkeypatch.setenv("COUCHFARM_USER", "hub")
    monkeypatch.setenv("COUCHFARM_PASSWORD", passwords["hub"])
    monkeypatch.setenv("COUCHFARM_DB", db)
    monkeypatch.delenv("COUCHDB_USER", raising=False)
    monkeypatch.delenv("COUCHDB_PASSWORD", raising=False)
    assert cli.main(["stats"]) == 0
    out = capsys.readouterr().out
    assert "only a server admin may read it" in out and "unknown" not in out
    monkeypatch.setenv("COUCHDB_USER", primary.user)
    monkeypatch.setenv("COUCHDB_PASSWORD", primary.password)
    assert cli.main(["stats"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if f" {db} " in line]
    assert len(rows) == 2 and all(row[4] not in ("?", "unknown", "missing") for row in rows), rows


def test_task_add_takes_max_runs_exclusions_and_alerts(farm, as_hub, capsys):
    flags = ["--tz", "Europe/Amsterdam", "--exclude", "02:00-03:00 # maintenance",
             "--exclude", "23:00-01:00 sat,sun", "--max-runs", "100",
             "--alert-after-failures", "3", "--alert-channel", "email"]  # fmt: skip
    assert cli.main([*_add("limited", "acme", "--new-client"), *flags]) == 0
    doc = farm.hub.get(farm.db, "task:acme:limited")
    assert doc["max_runs"] == 100 and doc["alert_after_failures"] == 3
    assert doc["alert_channels"] == ["email"]
    assert doc["schedule"]["exclusions"] == [
        {"from": "02:00", "to": "03:00", "note": "maintenance"},
        {"from": "23:00", "to": "01:00", "days": ["sat", "sun"]},
    ]
    capsys.readouterr()
    assert cli.main(["task", "show", "task:acme:limited"]) == 0
    assert "max_runs" in capsys.readouterr().out
    assert cli.main([*_add("badwindow", "acme"), "--exclude", "nightly"]) == 2
    assert "--exclude: schedule.exclusions: line 1" in capsys.readouterr().err
    assert cli.main([*_add("zero", "acme"), "--max-runs", "0"]) == 2
    assert "max_runs" in capsys.readouterr().err


def _quarantine(farm, worker: str) -> None:
    from hub.protocol import quorum
    from hub.protocol.model import reliability_id

    rel = None
    for _ in range(3):
        rel = quorum.update_reliability(rel, worker, False, farm.now())
    assert rel is not None and rel.quarantined
    current = farm.hub.get_or_none(farm.db, reliability_id(worker))
    doc = rel.to_doc() | ({"_rev": current["_rev"]} if current else {})
    farm.hub.put(farm.db, doc)


def test_worker_lift_quarantine_is_recorded_and_idempotent(farm, as_hub, capsys):
    """`hub worker lift-quarantine` replaces a hand edit of hub:reliability:{worker}: the
    lift is recorded (who, as which CouchDB user, when), a second lift writes nothing."""
    _quarantine(farm, "w3")
    assert cli.main(["worker", "reliability", "w3"]) == 0
    shown = capsys.readouterr().out
    assert "quarantined   yes, since" in shown and "disagree streak 3" in shown, shown
    argv = ["worker", "lift-quarantine", "w3", "--by", "alice", "--reason", "clock fixed"]
    assert cli.main(argv) == 0
    assert "w3: quarantine lifted by alice" in capsys.readouterr().out
    doc = farm.admin.get(farm.db, "hub:reliability:w3")
    assert doc["quarantined"] is False and doc["disagree_streak"] == 0
    assert "quarantined_at" not in doc and doc["disagree"] == 3
    [lift] = doc["lifts"]
    assert (lift["by"], lift["user"], lift["reason"]) == ("alice", "hub", "clock fixed")
    assert lift["quarantined_at"] and lift["at"] >= lift["quarantined_at"]
    assert cli.main(["worker", "lift-quarantine", "w3"]) == 0  # again: nothing to do
    assert "not quarantined; nothing to lift (last lifted" in capsys.readouterr().out
    assert farm.admin.get(farm.db, "hub:reliability:w3")["_rev"] == doc["_rev"]
    assert cli.main(["worker", "reliability", "w3"]) == 0
    shown = capsys.readouterr().out
    assert "quarantined   no" in shown and "by alice (as hub;" in shown, shown
    assert cli.main(["worker", "reliability", "--json", "w3"]) == 0
    assert '"lifts"' in capsys.readouterr().out


def test_worker_commands_name_an_unknown_worker(farm, as_hub, capsys):
    assert cli.main(["worker", "lift-quarantine", "nobody-here"]) == 2
    err = capsys.readouterr().err
    assert "no worker named 'nobody-here'" in err and "hub:reliability:nobody-here" in err, err
    assert cli.main(["worker", "reliability", "Not A Name"]) == 2
    assert "is not a worker name" in capsys.readouterr().err
    # A known worker (its worker doc) that was never compared: nothing to show or lift.
    stamp = farm.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
    farm.worker("w2").put(farm.db, {"_id": "worker:w2", "type": "worker", "name": "w2",
                                    "state": "running", "version": "0.1.0", "current": [],
                                    "last_seen": stamp, "slots": 1, "tubes": ["default"],
                                    "kinds": ["demo.sleep"]})  # fmt: skip
    assert cli.main(["worker", "reliability", "w2"]) == 0
    assert "none yet" in capsys.readouterr().out
    assert cli.main(["worker", "lift-quarantine", "w2"]) == 0
    assert "not quarantined; nothing to lift" in capsys.readouterr().out
    assert farm.admin.get_or_none(farm.db, "hub:reliability:w2") is None
