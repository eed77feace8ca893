"""``make demo`` (hub/demo.py) as a newcomer meets it (issue 19): the summary names every
address and login, the demo keeps its ports from run to run, and Ctrl-C through a pipe,
SIGTERM and SIGHUP all print the final stats and stop every process it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from hub import demo
from hub.devserver import free_port
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
PRIMARY, STANDBY = "http://127.0.0.1:15984", "http://127.0.0.1:15985"


def _summary(portal_port: int = 8080) -> str:
    return demo.where(PRIMARY, STANDBY, "farm", "admin", "demo-admin", portal_port,
                      Path("/x/var/demo/logs"))  # fmt: skip


def test_the_summary_names_every_address_and_login():
    text = _summary()
    for address in ("http://127.0.0.1:8080/", f"{PRIMARY}/_utils", f"{STANDBY}/_utils"):
        assert address in text
    for user, password in (*demo.PASSWORDS.items(), ("admin", "demo-admin")):
        assert f"{user} / {password}" in text, user
    operator = next(line for line in text.splitlines() if "operator login" in line)
    assert f"hub / {demo.PASSWORDS['hub']}" in operator
    assert "express-pouchdb" in text and "CouchDB 3" in text  # which Fauxton this is
    assert ".venv/bin/hub" in text and "/x/var/demo/logs/" in text


def test_the_summary_has_export_lines_that_work_when_pasted():
    pasted = [line for line in _summary().splitlines() if line.strip().startswith("export ")]
    assert len(pasted) == 2
    shell = "\n".join([*pasted, 'echo "$COUCHFARM_URL|$COUCHFARM_USER|$COUCHFARM_PASSWORD"'])
    run = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == f"{PRIMARY},{STANDBY}|hub|{demo.PASSWORDS['hub']}"


def test_without_a_portal_the_summary_says_so():
    assert "(off: --portal-port -1)" in _summary(-1)


def _time_wait_on(port_holder: socket.socket) -> int:
    """A port whose listener is gone and whose last connection waits in TIME_WAIT, as a
    demo's servers leave theirs for a minute after they stop."""
    port = port_holder.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = port_holder.accept()
    served.close()  # the server closes first: its side of the connection enters TIME_WAIT
    client.close()
    port_holder.close()
    return port


def test_the_demo_keeps_its_port_after_the_previous_run_stopped():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = _time_wait_on(listener)
    # What the demo did: a plain bind calls the port taken.
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    assert demo.port_or_free(port) == port


def test_the_demo_moves_off_a_port_something_listens_on():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert demo.port_or_free(port) != port


def _start_demo(tmp_path: Path) -> tuple[subprocess.Popen[str], list[int], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COUCHDB_", "COUCHFARM_"))}
    env["PYTHONPATH"] = str(REPO)
    ports = [free_port(), free_port()]
    argv = [sys.executable, "-m", "hub.demo", "--dir", str(tmp_path / "demo"),
            "--primary-port", str(ports[0]), "--standby-port", str(ports[1]),
            "--portal-port", "-1", "--db", "farm_demo_stop"]  # fmt: skip
    # Its own session, as a terminal's foreground job has its own process group.
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return proc, ports, tmp_path / "demo" / "logs" / "demo.log"


def _read_all(proc: subprocess.Popen[str], into: list[str]) -> threading.Thread:
    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            into.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("how", ["ctrl-c through a closed pipe", "SIGTERM", "SIGHUP"])
def test_every_way_of_stopping_the_demo_prints_the_stats_and_stops_every_process(tmp_path, how):
    proc, ports, log = _start_demo(tmp_path)
    output: list[str] = []
    started: list[psutil.Process] = []
    try:
        if how.startswith("ctrl-c"):
            assert proc.stdout is not None
            wait_for(lambda: "Couchfarm demo is running" in proc.stdout.readline(), timeout=180)
        else:
            _read_all(proc, output)
        wait_for(lambda: log.exists() and "hub stats after" in log.read_text(), timeout=240)
        started = psutil.Process(proc.pid).children(recursive=True)
        commands = [" ".join(child.cmdline()) for child in started]
        assert sum("pouchdb-server" in command for command in commands) == 2, commands
        assert any("hub.cli serve" in command for command in commands), commands
        assert any("desktop_worker --headless" in command for command in commands), commands
        if how.startswith("ctrl-c"):
            assert proc.stdout is not None
            proc.stdout.close()  # `| tee` dies of the same Ctrl-C: the demo's stdout is gone
            os.killpg(proc.pid, signal.SIGINT)  # the terminal signals the whole foreground job
        else:
            proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGHUP)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for child in started:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
    _gone, alive = psutil.wait_procs(started, timeout=30)
    assert alive == [], [child.cmdline() for child in alive]
    assert not any(_answers(port) for port in ports)
    text = log.read_text()
    end = text[text.index("[demo] stopping") :]
    assert "hub stats at the end" in end and "client demo:" in end, end
    assert text.rstrip().endswith("[demo] stopped")
    if not how.startswith("ctrl-c"):
        assert "".join(output).rstrip().endswith("[demo] stopped")
