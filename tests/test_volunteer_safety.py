"""Issue 10's acceptance: a default worker refuses private targets with a clear error result.

The real engine claims real occurrences from the test server and runs http.check in a
child process. A task aimed at http://127.0.0.1:<port>/ and one aimed at a name that
resolves to 10.0.0.1 end ``failed`` with an error that names the reason; the same
127.0.0.1 task succeeds on a worker started with allow_private_network. (This sandbox
never sends traffic to 10.0.0.0/8, so the allowed worker is shown the 127.0.0.1 task
only; netguard's unit tests cover that 10.0.0.1 is then allowed.)
"""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from datetime import timedelta

import pytest

from desktop_worker import runner
from desktop_worker.config import WorkerConfig
from desktop_worker.engine import Engine
from hub.protocol import states
from hub.protocol.model import Task, task_id
from hub.protocol.timefmt import to_wire

INTERNAL_NAME = "intranet.example.test"


@pytest.fixture(scope="module")
def local_site():
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from the volunteer's own network"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _occurrence(farm, slug: str, url: str, tube: str):
    now = farm.now().replace(microsecond=0)
    stamp = to_wire(now)
    task = Task(
        _id=task_id("acme", slug), client="acme", slug=slug, kind="http.check",
        input={"url": url}, schedule={"every": 3600}, tube=tube, max_attempts=1,
        created_at=stamp, updated_at=stamp,
    )  # fmt: skip
    occ = states.materialize(task, now - timedelta(seconds=1), now)
    farm.hub.put(farm.db, occ.to_doc())
    return occ.id


def _engine(farm, tmp_path, name: str, tube: str, allow: bool) -> Engine:
    def start_run(kind, data, limits, policy):
        # Only the test's name map is added: the child resolves INTERNAL_NAME to 10.0.0.1.
        policy = dataclasses.replace(policy, resolver_hosts={INTERNAL_NAME: ["10.0.0.1"]})
        return runner.start_run(kind, data, limits, policy)

    config = WorkerConfig(
        hub_urls=[farm.server.url], name=name, password=farm.passwords[name], db=farm.db,
        tubes=[tube], allow_private_network=allow, spool_path=tmp_path / f"{name}.sqlite3",
    )  # fmt: skip
    return Engine(config, start_run=start_run, feed_wait_s=2.0).start()


def _wait_final(farm, occ_ids: list[str], timeout: float = 60.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        docs = {i: farm.admin.get(farm.db, i) for i in occ_ids}
        if all(d["state"] in ("done", "failed", "buried") for d in docs.values()):
            return docs
        time.sleep(0.5)
    raise AssertionError(f"not finished: {[(i, d['state']) for i, d in docs.items()]}")


def test_default_worker_refuses_private_targets_with_a_clear_error(farm, tmp_path, local_site):
    loopback = _occurrence(farm, "loopback", local_site, "guarded")
    internal = _occurrence(farm, "internal", f"http://{INTERNAL_NAME}/", "guarded")
    engine = _engine(farm, tmp_path, "w1", "guarded", allow=False)
    try:
        docs = _wait_final(farm, [loopback, internal])
    finally:
        engine.stop()
    for occ_id, words in ((loopback, "127.0.0.1 is a loopback address"),
                          (internal, "10.0.0.1, a private address")):  # fmt: skip
        doc = docs[occ_id]
        assert doc["state"] == "failed", doc
        error = doc["errors"][-1]["error"]
        assert words in error and "--allow-private-network" in error, error


def test_worker_allowed_private_networks_runs_the_same_task(farm, tmp_path, local_site):
    loopback = _occurrence(farm, "loopback-ok", local_site, "open")
    engine = _engine(farm, tmp_path, "w2", "open", allow=True)
    try:
        doc = _wait_final(farm, [loopback])[loopback]
    finally:
        engine.stop()
    assert doc["state"] == "done", doc
    assert doc["result"]["output"]["status"] == 200 and doc["result"]["worker"] == "w2"
