"""The ``desktop-worker`` command: flags, signals, and a worker killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from desktop_worker import cli
from desktop_worker.claim import Claimer
from hub.protocol import states
from hub.protocol.model import Occurrence
from hub.protocol.timefmt import from_wire
from hub.protocol.version import __version__
from tests.test_engine import seed
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_without_headless_the_tray_app_starts(monkeypatch):
    from desktop_worker.tray import app

    seen: list[list[str] | None] = []
    monkeypatch.setattr(app, "main", lambda argv=None: seen.append(argv) or 7)
    assert cli.main(["--name", "w9"]) == 7
    assert seen == [["--name", "w9"]]


def test_missing_password_is_named(capsys, monkeypatch):
    monkeypatch.delenv("COUCHFARM_WORKER_PASSWORD", raising=False)
    monkeypatch.setattr("desktop_worker.config.keyring_password", lambda name: None)
    code = cli.main(["--headless", "--hub", "http://127.0.0.1:9", "--name", "pc1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no password for worker 'pc1'" in err and "--password-file" in err
    assert "COUCHFARM_WORKER_PASSWORD" in err and "keyring" in err


def test_flags_map_to_settings():
    flags = "--headless --hub http://a:1,http://b:2 --name pc1 --tubes x,y --slots 3"
    flags += " --allow-private-network --db farm2 --insecure"
    args = cli.parser().parse_args(flags.split())
    settings = cli.overrides_from(args)
    assert settings["hub_urls"] == ["http://a:1", "http://b:2"]
    assert settings["tubes"] == ["x", "y"] and settings["slots"] == 3
    assert settings["allow_private_network"] is True and settings["db"] == "farm2"
    assert settings["verify_tls"] is False and settings["kinds"] is None


def _start(farm, tmp_path: Path, name: str, tube: str) -> tuple[subprocess.Popen, Path]:
    password_file = tmp_path / f"{name}.pw"
    password_file.write_text(farm.passwords[name])
    log = tmp_path / f"{name}-{tube}.log"
    env = {k: v for k, v in os.environ.items() if k != "COUCHFARM_WORKER_PASSWORD"}
    command = [
        *(sys.executable, "-m", "desktop_worker", "--headless"),
        *("--hub", farm.server.url, "--name", name, "--password-file", str(password_file)),
        *("--tubes", tube, "--db", farm.db, "--spool", str(tmp_path / f"{name}.sqlite3")),
    ]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, log


def _leased_by(farm, occ_id: str, name: str) -> dict | None:
    doc = farm.hub.get(farm.db, occ_id)
    if doc["state"] == "leased" and doc["lease"]["worker"] == name:
        return doc
    return None


def test_sigterm_drains_then_exits(farm, tmp_path):
    [occ_id] = seed(farm.hub, farm.db, "term", "term", 1, ms=1500)
    proc, log = _start(farm, tmp_path, "w1", "term")
    try:
        wait_for(lambda: _leased_by(farm, occ_id, "w1"), timeout=20)
        proc.send_signal(signal.SIGTERM)
        [later] = seed(farm.hub, farm.db, "term2", "term", 1, ms=10)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    doc = farm.hub.get(farm.db, occ_id)
    assert doc["state"] == "done" and doc["result"]["worker"] == "w1", text
    assert farm.hub.get(farm.db, later)["state"] == "ready"
    assert "event=signal signal=SIGTERM action=drain" in text
    assert f"event=run_finished occ={occ_id} kind=demo.sleep status=done" in text
    assert "event=worker_stop" in text and 'source="file ' in text
    assert farm.passwords["w1"] not in text  # never logged
    # `python -m desktop_worker.cli` made every run warn that the module was "found in
    # sys.modules" (the forkserver preloads it, and multiprocessing re-imports a named main).
    assert "RuntimeWarning" not in text


def test_kill_9_mid_run_leaves_the_occurrence_claimable_after_ttr(farm, tmp_path):
    [occ_id] = seed(farm.hub, farm.db, "kill9", "kill9", 1, ms=8000, ttr=2)
    proc, log = _start(farm, tmp_path, "w1", "kill9")
    children: list[psutil.Process] = []
    try:
        wait_for(lambda: _leased_by(farm, occ_id, "w1"), timeout=20)
        time.sleep(1.2)  # long enough for one touch
        children = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for child in children:  # the run's child leads its own process group
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
    leased = Occurrence.from_doc(farm.hub.get(farm.db, occ_id))
    assert leased.state == "leased" and leased.lease is not None
    # Nobody may take it before the lease runs out...
    assert Claimer(farm.worker("w2"), farm.db, "w2", ["kill9"]).claim(1).won == []
    # ...and once it has, the hub's reaper (played here) puts it back to ready.
    expires = from_wire(leased.lease.expires_at)
    wait_for(lambda: farm.now() > expires, timeout=10, every=0.1)
    farm.hub.put(farm.db, states.expire(leased, farm.now()).to_doc())
    result = Claimer(farm.worker("w2"), farm.db, "w2", ["kill9"]).claim(1)
    assert [o.id for o in result.won] == [occ_id]
    assert result.won[0].attempt == 2 and result.won[0].errors[-1].worker == "w1"
    assert "result" not in farm.hub.get(farm.db, occ_id)
    assert f"event=run_started occ={occ_id}" in log.read_text()
