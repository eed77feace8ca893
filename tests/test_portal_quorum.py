"""What clients and operators see of quorum runs (issue 18, section 4), against the real
test server: the k results of a run on the task page, the run's page and the API, which
one is canonical and why, inconclusive runs with every result, accepted-alone runs and
spot checks; workers by reliability on the ops page; validation and alternatives in the
results feed and the exports. Quorum-1 runs read exactly as before.

The quorum documents are written in the brief's fixed shape by tests/quorum_docs.py."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from fastapi.testclient import TestClient

from hub.portal.app import create_app
from hub.portal.quorum import quorum_view, reliability_row, reliability_rows
from hub.portal.routes.export import EXPORT_COLUMNS, QUORUM_COLUMNS
from hub.protocol.model import WorkerDoc, worker_id
from hub.protocol.timefmt import to_wire
from hub.service import FarmService
from tests import quorum_docs
from tests.quorum_docs import WHY_CANONICAL, WHY_INCONCLUSIVE
from tests.test_portal import login

SECRET = "quorum-portal-secret-0123456789abcdef"
HTML = {"Accept": "text/html"}


# ---------------------------------------------------------------- pure: the views


def _occ(**fields):
    base = {"_id": "occ:task:acme:p:20261201T000000Z", "due_at": "2026-12-01T00:00:00.000Z"}
    return {**base, **fields}


def _run(worker, status="ok", started="2026-12-01T00:00:01.000Z", output=None):
    return {"status": status, "worker": worker, "attempt": 1, "started_at": started,
            "finished_at": "2026-12-01T00:00:01.250Z", "output": output}  # fmt: skip


def test_a_quorum_1_document_has_no_quorum_view():
    assert quorum_view(_occ(state="done", result=_run("w1"))) is None
    assert quorum_view(_occ(quorum=1, validation=None, slots=None, alternatives=None)) is None
    assert quorum_view({"type": "result", "status": "ok", "output": {"a": 1}}) is None


def test_the_view_orders_results_canonical_first_and_marks_each():
    validation = {"outcome": "canonical", "canonical": "w2", "agree": ["w2", "w3"],
                  "disagree": ["w1"], "why": "2 of 3 agree", "decided_at": "x",
                  "spot_check": False}  # fmt: skip
    slots = {w: {"worker": w, "state": "done", "result": _run(w, output={"n": i})}
             for i, w in enumerate(("w1", "w2", "w3"))}  # fmt: skip
    view = quorum_view(_occ(quorum=3, slots=slots, validation=validation))
    assert view is not None
    assert [(s.worker, s.verdict) for s in view.slots] == [
        ("w2", "canonical"), ("w3", "agrees"), ("w1", "disagrees"),
    ]  # fmt: skip
    assert view.outcome == "canonical" and view.canonical == "w2" and view.why == "2 of 3 agree"
    assert view.results == 3 and view.slots[0].latency_ms == 1000
    assert view.slots[0].duration_ms == 250
    assert [r["worker"] for r in view.alternatives] == ["w2", "w3", "w1"]
    assert view.to_json()["slots"][0]["output"] == {"n": 1}


def test_an_inconclusive_view_keeps_every_result_and_calls_none_wrong():
    validation = {"outcome": "inconclusive", "canonical": None, "agree": [],
                  "disagree": ["w1", "w2"], "why": "the 2 results disagree"}  # fmt: skip
    result = {"_id": "res:x", "type": "result", "due_at": "2026-12-01T00:00:00.000Z",
              "status": "inconclusive", "validation": validation,
              "alternatives": [_run("w2"), _run("w1")]}  # fmt: skip
    view = quorum_view(result)
    assert view is not None and view.outcome == "inconclusive" and view.canonical is None
    assert [(s.worker, s.verdict) for s in view.slots] == [("w1", "no_majority"),
                                                           ("w2", "no_majority")]  # fmt: skip
    assert len(view.alternatives) == 2


def test_a_result_accepted_alone_without_alternatives_shows_its_one_result():
    validation = {"outcome": "accepted_alone", "canonical": "w1", "agree": ["w1"],
                  "disagree": [], "why": "w1 is trusted"}  # fmt: skip
    archived = {"_id": "res:x", "type": "result", "due_at": "2026-12-01T00:00:00.000Z",
                **_run("w1", output={"n": 1}), "validation": validation}  # fmt: skip
    view = quorum_view(archived)
    assert view is not None and [(s.worker, s.verdict) for s in view.slots] == [("w1", "canonical")]
    assert view.slots[0].output == {"n": 1} and view.slots[0].latency_ms == 1000
    live = _occ(quorum=3, state="done", result=_run("w1"), validation=validation)
    assert [s.worker for s in quorum_view(live).slots] == ["w1"]


def test_the_view_of_runs_not_decided_and_of_broken_fields():
    slots = {"w1": {"worker": "w1", "state": "done", "result": _run("w1")},
             "w2": {"worker": "w2", "state": "leased", "progress": {"num": 1, "den": 2}},
             "bad": "not a slot"}  # fmt: skip
    view = quorum_view(_occ(quorum=3, state="leased", slots=slots))
    assert view is not None and view.outcome is None and view.results == 1
    assert {s.worker: s.verdict for s in view.slots} == {"w1": "", "w2": ""}
    # A validation of an unknown outcome, lists of the wrong type: read as absent.
    odd = quorum_view(_occ(quorum=2, validation={"outcome": "maybe"}, slots={"w1": 3}))
    assert odd is not None and odd.outcome is None and odd.slots == []
    weird = quorum_view(_occ(validation={"outcome": "canonical", "agree": "w1", "why": 5}))
    assert weird is not None and weird.agree == [] and weird.why == ""


def test_reliability_rows_put_quarantined_then_flagged_first():
    def doc(worker, agree, disagree, streak, quarantined=False):
        score = (agree + 1) / (agree + disagree + 2)
        return {"_id": f"hub:reliability:{worker}", "type": "reliability", "worker": worker,
                "agree": agree, "disagree": disagree, "disagree_streak": streak,
                "score": score, "quarantined": quarantined}  # fmt: skip

    rows = reliability_rows([
        doc("good", 50, 0, 0), doc("shaky", 50, 3, 2), doc("bad", 1, 9, 4, True),
        doc("new", 0, 0, 0), doc("worse", 1, 6, 1), {"type": "worker", "name": "x"},
    ])  # fmt: skip
    assert [(r.worker, r.quarantined, r.flagged) for r in rows] == [
        ("bad", True, False), ("worse", False, True), ("shaky", False, True),
        ("new", False, False), ("good", False, False),
    ]  # fmt: skip
    assert rows[1].flag_reason == "score under 0.5" and "2 disagreements" in rows[2].flag_reason
    # A missing score is computed by the documented formula.
    row = reliability_row({"type": "reliability", "worker": "w", "agree": 3, "disagree": 1})
    assert row is not None and row.score == round(4 / 6, 4)


# ---------------------------------------------------------------- against the server


@pytest.fixture(scope="module")
def service(farm) -> FarmService:
    return FarmService(farm.hub, farm.db)


@pytest.fixture(scope="module")
def app(farm, service):
    return create_app(service, farm.hub, secret_key=SECRET)


@pytest.fixture(scope="module")
def acme(app, farm) -> TestClient:
    return login(app, "acme", farm.passwords["acme"])


@pytest.fixture(scope="module")
def globex(app, farm) -> TestClient:
    return login(app, "globex", farm.passwords["globex"])


@pytest.fixture(scope="module")
def operator(app, farm) -> TestClient:
    return login(app, "hub", farm.passwords["hub"])


@pytest.fixture(scope="module")
def seeded(farm):
    now = farm.now().replace(microsecond=0)
    ids = quorum_docs.seed_quorum_task(farm, "acme", "vote", now)
    quorum_docs.seed_reliability(farm, now)
    return ids


def _rows_by_id(page_html: str) -> dict[str, str]:
    """The task page's quorum sub-rows by occurrence id."""
    pattern = r'<tr class="quorum-row" data-occurrence="([^"]+)">(.*?)</td></tr>'
    return dict(re.findall(pattern, page_html, re.S))


def test_the_task_page_lists_each_runs_results_and_verdict(acme, seeded):
    page = acme.get("/tasks/vote", headers=HTML)
    assert page.status_code == 200
    rows = _rows_by_id(page.text)
    # Every quorum run has its results listed; the quorum-1 run has none.
    assert set(rows) == {seeded[k] for k in ("canonical", "collecting", "inconclusive", "spot",
                                             "alone")}  # fmt: skip
    canonical = rows[seeded["canonical"]]
    assert 'data-outcome="canonical"' in canonical and "canonical: w1" in canonical
    assert WHY_CANONICAL in canonical
    verdicts = re.findall(r'data-worker="(w\d)" data-verdict="(\w*)"', canonical)
    assert verdicts == [("w1", "canonical"), ("w2", "agrees"), ("w3", "disagrees")]
    assert "&#34;status&#34;:503" in canonical or '"status":503' in canonical  # the liar's output
    inconclusive = rows[seeded["inconclusive"]]
    assert 'data-outcome="inconclusive"' in inconclusive and WHY_INCONCLUSIVE in inconclusive
    assert "Every result is listed" in inconclusive
    # Inconclusive: no result is called wrong (no majority to disagree with), none is kept.
    assert re.findall(r'data-worker="(w\d)" data-verdict="(\w*)"', inconclusive) == [
        ("w2", "no_majority"), ("w3", "no_majority"),
    ]  # fmt: skip
    assert 'data-spot-check="1"' in rows[seeded["spot"]]
    assert 'data-spot-check="1"' not in canonical
    assert 'data-outcome="accepted_alone"' in rows[seeded["alone"]]
    collecting = rows[seeded["collecting"]]
    assert "waiting: 1 of 3 results in" in collecting and "waiting for the response" in collecting
    # It is running although the occurrence itself is still ready (slots are leased).
    running = page.text.split("<h2>Running now</h2>", 1)[1].split("</section>", 1)[0]
    assert seeded["collecting"] in running and "1 of 3 results in" in running
    # The task's facts say its quorum settings (once the model has them: tests/quorum_docs).
    assert ('id="quorum-settings"' in page.text) is quorum_docs.model_has_quorum()
    # The history row of the inconclusive run says so in its state cell.
    assert 'class="status status-inconclusive">inconclusive' in page.text


def test_the_run_page_shows_the_k_results_and_why(acme, seeded):
    page = acme.get(f"/tasks/vote/occurrences/{seeded['canonical']}", headers=HTML)
    assert page.status_code == 200
    assert '<section class="card quorum" id="quorum">' in page.text
    assert "3 results of 3 (quorum run)" in page.text and WHY_CANONICAL in page.text
    assert "Canonical result" in page.text
    assert re.findall(r'data-worker="(w\d)" data-verdict="(\w*)"', page.text) == [
        ("w1", "canonical"), ("w2", "agrees"), ("w3", "disagrees"),
    ]  # fmt: skip
    archived = acme.get(f"/tasks/vote/occurrences/{seeded['inconclusive']}", headers=HTML)
    assert archived.status_code == 200
    assert 'class="card quorum inconclusive"' in archived.text
    assert "2 results (quorum run)" in archived.text and WHY_INCONCLUSIVE in archived.text
    assert 'id="no-canonical"' in archived.text
    assert len(re.findall(r'<pre class="json output">', archived.text)) == 2
    plain = acme.get(f"/tasks/vote/occurrences/{seeded['plain']}", headers=HTML)
    assert plain.status_code == 200 and 'id="quorum"' not in plain.text


def test_the_api_gives_the_quorum_view(acme, seeded):
    one = acme.get(f"/api/tasks/vote/occurrences/{seeded['canonical']}").json()
    assert one["source"] == "live" and one["quorum"]["outcome"] == "canonical"
    assert [s["worker"] for s in one["quorum"]["slots"]] == ["w1", "w2", "w3"]
    assert one["quorum"]["why"] == WHY_CANONICAL and one["quorum"]["results"] == 3
    archived = acme.get(f"/api/tasks/vote/occurrences/{seeded['inconclusive']}").json()
    assert archived["source"] == "archive" and archived["quorum"]["outcome"] == "inconclusive"
    plain = acme.get(f"/api/tasks/vote/occurrences/{seeded['plain']}").json()
    assert "quorum" not in plain
    history = acme.get("/api/tasks/vote/occurrences").json()["occurrences"]
    by_id = {r["id"]: r for r in history}
    assert by_id[seeded["inconclusive"]]["status"] == "inconclusive"
    assert by_id[seeded["alone"]]["quorum"]["outcome"] == "accepted_alone"
    assert by_id[seeded["spot"]]["quorum"]["spot_check"] is True
    assert "quorum" not in by_id[seeded["plain"]]
    assert by_id[seeded["collecting"]]["worker"] == "w1, w2, w4"  # no lease holder: the slots
    # The state filter knows the new final state.
    only = acme.get("/api/tasks/vote/occurrences", params={"state": "inconclusive"}).json()
    assert [r["id"] for r in only["occurrences"]] == [seeded["inconclusive"]]


def test_another_client_sees_none_of_it(globex, seeded):
    for path in (f"/tasks/vote/occurrences/{seeded['canonical']}", "/tasks/vote"):
        assert globex.get(path, headers=HTML).status_code == 404
    assert globex.get(f"/api/tasks/vote/occurrences/{seeded['inconclusive']}").status_code == 404
    assert globex.get("/api/tasks/vote/results.jsonl").status_code == 404
    seen = globex.get("/api/results", params={"alternatives": 1}).json()["results"]
    assert all(r["client"] == "globex" for r in seen)
    assert globex.get("/api/ops").status_code == 404


def test_the_ops_page_lists_workers_by_reliability(farm, operator, acme, seeded):
    now = farm.now()
    ops = operator.get("/api/ops").json()
    order = [(r["worker"], r["quarantined"], r["flagged"]) for r in ops["reliability"]]
    assert order == [("w3", True, False), ("w5", False, True), ("w4", False, True),
                     ("w2", False, False), ("w1", False, False)]  # fmt: skip
    assert ops["reliability"][0]["score"] == round(12 / 27, 4)
    page = operator.get("/ops", headers=HTML)
    assert page.status_code == 200
    table = page.text.split('id="reliability"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<tr class="(\w+)" data-worker="(w\d)"', table) == [
        ("quarantined", "w3"), ("flagged", "w5"), ("flagged", "w4"), ("trusted", "w2"),
        ("trusted", "w1"),
    ]  # fmt: skip
    assert "2 disagreements in a row" in table
    # A quarantined worker is marked in the workers list too.
    farm.hub.put(farm.db, WorkerDoc(
        _id=worker_id("w3"), name="w3", version="0.1.0", os="Linux", last_seen=to_wire(now),
        started_at=to_wire(now),
    ).to_doc())  # fmt: skip
    workers = {w["name"]: w for w in operator.get("/api/ops").json()["workers"]}
    assert workers["w3"]["quarantined"] is True
    assert acme.get("/api/ops").status_code == 404


def test_the_results_feed_carries_validation_and_alternatives_on_request(acme, seeded):
    plain = acme.get("/api/results").json()["results"]
    by_id = {r["occurrence"]: r for r in plain}
    assert set(by_id) == {seeded[k] for k in ("inconclusive", "spot", "alone", "plain")}
    spot = by_id[seeded["spot"]]
    assert spot["worker"] == "w1" and spot["output"]["status"] == 200  # the canonical result
    assert spot["validation"]["outcome"] == "canonical" and spot["validation"]["spot_check"]
    assert "alternatives" not in spot
    assert by_id[seeded["inconclusive"]]["status"] == "inconclusive"
    quorum_1 = by_id[seeded["plain"]]
    assert "validation" not in quorum_1 and "alternatives" not in quorum_1
    full = acme.get("/api/results", params={"alternatives": 1}).json()["results"]
    by_id = {r["occurrence"]: r for r in full}
    assert [a["worker"] for a in by_id[seeded["spot"]]["alternatives"]] == ["w1", "w2", "w4"]
    assert len(by_id[seeded["inconclusive"]]["alternatives"]) == 2
    assert "alternatives" not in by_id[seeded["plain"]]
    # The stream, the same way.
    for flag, has in ((0, False), (1, True)):
        params = {"seconds": 1, "alternatives": flag}
        with acme.stream("GET", "/api/results/stream", params=params) as reply:
            lines = [json.loads(line) for line in reply.iter_lines() if line.strip()]
        streamed = {x["result"]["occurrence"]: x["result"] for x in lines if "result" in x}
        assert ("alternatives" in streamed[seeded["spot"]]) is has
        assert streamed[seeded["spot"]]["validation"]["canonical"] == "w1"


def test_exports_carry_validation_and_alternatives_on_request(acme, seeded):
    lines = [json.loads(x) for x in acme.get("/api/tasks/vote/results.jsonl").text.splitlines()]
    by_id = {r["occurrence"]: r for r in lines}
    assert by_id[seeded["canonical"]]["worker"] == "w1"
    assert by_id[seeded["canonical"]]["validation"]["disagree"] == ["w3"]
    assert "alternatives" not in by_id[seeded["canonical"]]
    assert set(by_id[seeded["plain"]]) == set(EXPORT_COLUMNS)  # quorum-1: unchanged
    full = acme.get("/api/tasks/vote/results.jsonl", params={"alternatives": 1}).text
    by_id = {r["occurrence"]: r for r in map(json.loads, full.splitlines())}
    alternatives = by_id[seeded["canonical"]]["alternatives"]
    assert [a["worker"] for a in alternatives] == ["w1", "w2", "w3"]
    assert alternatives[2]["output"]["status"] == 503 and alternatives[2]["attempt"] == 1
    assert by_id[seeded["inconclusive"]]["status"] == "inconclusive"
    assert len(by_id[seeded["inconclusive"]]["alternatives"]) == 2
    # CSV: the quorum columns for a quorum task (or with alternatives), a row per run.
    reply = acme.get("/api/tasks/vote/results.csv", params={"alternatives": 1})
    table = list(csv.DictReader(io.StringIO(reply.text)))
    assert list(table[0]) == [*EXPORT_COLUMNS, *QUORUM_COLUMNS, "alternatives"]
    rows = {r["occurrence"]: r for r in table}
    canonical = rows[seeded["canonical"]]
    assert canonical["validation"] == "canonical" and canonical["canonical"] == "w1"
    assert canonical["why"] == WHY_CANONICAL and canonical["disagree"] == "w3"
    assert len(json.loads(canonical["alternatives"])) == 3
    assert rows[seeded["inconclusive"]]["validation"] == "inconclusive"
    assert rows[seeded["plain"]]["validation"] == "" and rows[seeded["plain"]]["alternatives"] == ""
    plain_csv = acme.get("/api/tasks/vote/results.csv").text.splitlines()[0].split(",")
    if quorum_docs.model_has_quorum():  # the task asks for quorum 3: the columns are there
        assert plain_csv == [*EXPORT_COLUMNS, *QUORUM_COLUMNS]
    else:
        assert plain_csv == list(EXPORT_COLUMNS)


def test_a_quorum_1_tasks_csv_is_unchanged(acme, service, seeded):
    service.add_task("acme", "single", {**quorum_docs.CHECK})
    header = acme.get("/api/tasks/single/results.csv").text.splitlines()[0]
    assert header.split(",") == list(EXPORT_COLUMNS)


# ---------------------------------------------------------------- asking for a quorum


def _block(html: str, name: str) -> str:
    start = html.index(f'name="{name}"')
    return html[start : html.find('<div class="field', start)]


def test_the_form_asks_for_a_quorum_once_tasks_have_one(acme):
    page = acme.get("/tasks/new", headers=HTML).text
    assert ('id="f-quorum"' in page) is quorum_docs.model_has_quorum()
    if not quorum_docs.model_has_quorum():
        return  # the quorum core is not merged yet: nothing to ask for
    form = {
        "name": "voted", "kind": "http.check", "in:http.check:url": "https://example.org/",
        "schedule_mode": "every", "schedule.every": "300", "schedule.tz": "UTC", "ttr": "60",
        "quorum": "3", "quorum_timeout": "30", "quorum_on_timeout": "fail", "adaptive": "on",
        "spot_check_rate": "0.25",
    }  # fmt: skip
    # A timeout shorter than the TTR: the service's problem, beside its field.
    refused = acme.post("/tasks/new", data=form, headers=HTML)
    assert refused.status_code == 400
    assert 'data-for="quorum_timeout"' in _block(refused.text, "quorum_timeout")
    done = acme.post("/tasks/new", data={**form, "quorum_timeout": "120"}, follow_redirects=False)
    assert done.status_code == 303, done.text
    task = acme.get("/api/tasks/voted").json()
    assert (task["quorum"], task["quorum_timeout"], task["quorum_on_timeout"]) == (3, 120, "fail")
    assert task["adaptive"] is True and task["spot_check_rate"] == 0.25
    edit = acme.get("/tasks/voted/edit", headers=HTML).text
    assert 'value="3"' in _block(edit, "quorum") and "checked" in _block(edit, "adaptive")
    assert 'id="quorum-settings"' in acme.get("/tasks/voted", headers=HTML).text


def test_the_api_takes_the_quorum_fields(acme):
    body = {"name": "apivote", **quorum_docs.CHECK, "quorum": 3, "adaptive": False}
    reply = acme.post("/api/tasks", json=body)
    if quorum_docs.model_has_quorum():
        assert reply.status_code == 201, reply.text
        assert reply.json()["quorum"] == 3
        changed = acme.patch("/api/tasks/apivote", json={"quorum": 5}).json()
        assert changed["quorum"] == 5
        bad = acme.patch("/api/tasks/apivote", json={"quorum": 9})
        assert bad.status_code == 400 and bad.json()["problems"][0].startswith("quorum: ")
    else:  # before the quorum core: refused, naming the field
        assert reply.status_code == 400 and "quorum: unknown field" in reply.json()["problems"]
