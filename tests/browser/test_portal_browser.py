"""The portal in a real browser (Debian's Chromium driven by Playwright), as a client uses it:
log in, create a task through the form (a mistake shown beside its field, then fixed), see
it run, pause it, download its CSV, log out.

Screenshots go to var/screenshots/ (ignored), so a test run leaves the tree clean. To
refresh the committed ones in docs/screenshots/ (docs/PORTAL.md):

    COUCHFARM_SCREENSHOTS=docs/screenshots .venv/bin/pytest -p no:cacheprovider tests/browser
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hub import archiver, provision
from hub.portal.app import PortalSettings, create_app
from hub.portal.server import serve_app
from hub.protocol import states
from hub.protocol.couch import Forbidden
from hub.protocol.model import Occurrence, Progress, WorkerDoc, worker_id
from hub.protocol.names import results_db
from hub.protocol.timefmt import to_wire
from hub.service import ConflictError, FarmService
from tests import quorum_docs

CHROMIUM = os.environ.get("COUCHFARM_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / os.environ.get("COUCHFARM_SCREENSHOTS", "var/screenshots")
SECRET = "browser-secret-key-for-the-portal-0123456789"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def service(farm) -> FarmService:
    return FarmService(farm.hub, farm.db)


@pytest.fixture(scope="module")
def portal(farm, service):
    settings = PortalSettings(secret_key=SECRET, refresh_seconds=2)
    app = create_app(service, farm.hub, secret_key=SECRET, settings=settings)
    running = serve_app(app, "127.0.0.1", 0)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            headless=True,
            args=ARGS,
        )
        yield chromium
        chromium.close()


def run_now(service: FarmService) -> Occurrence:
    """An extra run now; run-now ids are whole seconds, so wait out a second taken."""
    for _ in range(30):
        try:
            return service.run_now("acme", "homepage")
        except (ConflictError, Forbidden):  # (PouchDB checks the VDU before the conflict)
            time.sleep(0.2)
    raise AssertionError("run-now kept conflicting")


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"portal-{name}.png"), full_page=True)


def run_as_worker(farm, occ: Occurrence, *, ok: bool = True, seconds: float = 1.5) -> None:
    """Claim and finish an occurrence as worker w1, through the state machine."""
    w1 = farm.worker("w1")
    now = farm.now()
    claimed = states.claim(occ, "w1", now)
    rev = w1.put(farm.db, claimed.to_doc())
    claimed = claimed.model_copy(update={"rev": rev})
    later = now + timedelta(seconds=seconds)
    if ok:
        done = states.finish(
            claimed, "w1", later, started_at=now,
            output={"status": 200, "elapsed_ms": 143, "bytes": 1256, "tls_days_left": 61},
        )  # fmt: skip
    else:
        done = states.fail(claimed, "w1", later, error="HTTP 503 from origin", permanent=True)
    w1.put(farm.db, done.to_doc())


def archive_history(farm, task, hours: int = 6) -> None:
    """A few hours of earlier results, as the archiver would have left them."""
    now = farm.now().replace(second=0, microsecond=0)
    docs: dict[str, list] = {}
    for k in range(hours * 6):
        due = now - timedelta(hours=hours) + timedelta(minutes=10 * k)
        occ = states.materialize(task, due, due)
        started = due + timedelta(seconds=1 + (k % 5) * 0.4)
        leased = states.claim(occ, "w2", started)
        if k % 9 == 4:
            final = states.fail(leased, "w2", started + timedelta(seconds=5), error="timeout",
                                permanent=True)  # fmt: skip
        else:
            final = states.finish(
                leased, "w2", started + timedelta(milliseconds=300 + 40 * (k % 7)),
                started_at=started, output={"status": 200},
            )  # fmt: skip
        docs.setdefault(results_db(farm.db, due), []).append(archiver.to_result(final).to_doc())
    for month_db, batch in docs.items():
        provision.ensure_results_db(farm.admin, month_db)
        farm.hub.bulk_docs(month_db, batch)


def test_a_client_day_in_the_browser(farm, service, portal, browser, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # JavaScript errors, and responses no step expects (the wrong password's 401 and a
    # half-typed schedule's 400 from the live preview are expected).
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and
            "Failed to load resource" not in m.text else None)  # fmt: skip
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status == 404 or
            r.status >= 500 else None)  # fmt: skip

    # --- log in
    page.goto(f"{portal.url}/")
    assert page.url.startswith(f"{portal.url}/login")
    page.fill("#username", "acme")
    page.fill("#password", "wrong password")
    page.click("button[type=submit]")
    assert "incorrect" in page.inner_text("#login-error")
    shot(page, "login")
    page.fill("#username", "acme")
    page.fill("#password", farm.passwords["acme"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/")
    assert "Tasks of acme" in page.inner_text("h1")

    # --- create a task through the form, with a mistake first
    page.click("text=New task")
    page.wait_for_url("**/tasks/new")
    page.fill("#f-name", "homepage")
    page.select_option("#f-kind", "http.check")
    page.fill("#f-http-check-url", "example.org/without-scheme")
    page.fill("#f-every", "300")
    page.fill("#f-tz", "Europe/Amsterdam")
    # The live preview, in the task's zone (CET in winter). (Waits use locators: the CSP
    # forbids the string evaluation wait_for_function needs, as it should.)
    expect(page.locator("#preview-list li").last).to_have_text(re.compile(r" CES?T$"))
    assert len(page.locator("#preview-list li").all()) == 5
    shot(page, "form")
    # An exclusion window over the next 20 minutes: the preview says which runs it skips.
    local_now = farm.now().astimezone(ZoneInfo("Europe/Amsterdam"))
    window = f"{local_now:%H:%M}-{local_now + timedelta(minutes=20):%H:%M} # maintenance"
    page.fill("#f-exclusions", window)
    expect(page.locator("#preview-excluded")).to_contain_text("Skipped by the exclusion windows")
    page.fill("#f-exclusions", "")
    expect(page.locator("#preview-excluded")).to_be_hidden()
    page.click("#save")
    error = page.locator('.field-error[data-for="input.url"]')
    error.wait_for()
    assert "is not an http(s) URL" in error.inner_text()
    # The message sits in the URL field's own block, next to the input.
    field = page.locator(".field", has=page.locator("#f-http-check-url"))
    assert field.locator(".field-error").count() == 1
    assert page.get_attribute("#f-http-check-url", "aria-invalid") == "true"
    shot(page, "form-error")
    page.fill("#f-http-check-url", "https://example.org/")
    page.click("#save")
    page.wait_for_url("**/tasks/homepage?done=created")
    assert "Task created" in page.inner_text(".flash")

    # --- see it run: a worker claims and finishes runs through the state machine
    task = service.get_task("acme", "homepage")
    archive_history(farm, task)
    run_as_worker(farm, run_now(service))
    second = run_now(service)
    leased = states.claim(second, "w1", farm.now())
    w1 = farm.worker("w1")
    rev = w1.put(farm.db, leased.to_doc())
    touched = states.touch(
        leased.model_copy(update={"rev": rev}), "w1", farm.now(),
        Progress(num=7, den=10, msg="fetching page 7 of 10"),
    )  # fmt: skip
    w1.put(farm.db, touched.to_doc())
    now = farm.now()
    farm.hub.put(
        farm.db,
        WorkerDoc(
            _id=worker_id("w1"), name="w1", version="0.1.0", os="Windows 11 Pro",
            tubes=["default", "windows"], last_seen=to_wire(now), started_at=to_wire(now),
            current=[second.id], slots=2,
        ).to_doc(),
    )  # fmt: skip
    page.reload()
    page.wait_for_selector("#plot svg")
    # The plot starts at the first run and gives duration, latency and success rate each
    # their own scale with labelled ticks.
    assert page.input_value("#plot-range-select") == "first"
    plot_text = page.inner_text("#plot")
    assert "Duration" in plot_text and "Latency" in plot_text and "Success rate" in plot_text
    assert page.locator("#plot text.tick").count() >= 10
    history = page.inner_text("#history")
    assert "done · ok" in history
    assert "fetching page 7 of 10" in page.inner_text("main")
    shot(page, "task")

    # --- the result viewer
    page.locator("#history tbody tr", has_text="done · ok").first.locator("a").click()
    page.wait_for_selector("#result-json")
    assert '"tls_days_left": 61' in page.inner_text("#result-json")
    shot(page, "occurrence")
    page.go_back()

    # --- pause it
    page.click("#action-pause")
    page.wait_for_url("**/tasks/homepage?done=pause")
    assert page.is_visible("#paused-badge")
    assert service.get_task("acme", "homepage").paused

    # --- download the CSV
    with page.expect_download() as download_info:
        page.click("#export-csv")
    target = tmp_path / "homepage.csv"
    download_info.value.save_as(target)
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 6 * 6 + 2
    assert [r["due_at"] for r in rows] == sorted(r["due_at"] for r in rows)
    assert {r["status"] for r in rows} >= {"ok", "failed"}

    # --- the dashboard refreshes itself without a reload
    page.goto(f"{portal.url}/")
    cell = page.locator('tr[data-task="homepage"] [data-count="ready"]')
    before = int(cell.inner_text())
    service.set_paused("acme", "homepage", False)
    run_now(service)
    expect(cell).to_have_text(str(before + 1), timeout=10_000)
    page.wait_for_selector("#activity svg")
    assert "Runs per hour" in page.inner_text("#activity")
    assert page.locator("#activity rect").count() >= 6
    shot(page, "dashboard")

    # --- log out
    page.click("#logout")
    page.wait_for_url("**/login")
    page.goto(f"{portal.url}/tasks/homepage")
    assert "/login" in page.url
    assert not errors, errors
    context.close()


def test_operators_ops_page_in_the_browser(farm, portal, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{portal.url}/login")
    page.fill("#username", "hub")
    page.fill("#password", farm.passwords["hub"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/")
    assert "Clients" in page.inner_text("h1")
    page.goto(f"{portal.url}/ops")
    assert "Workers" in page.inner_text("main")
    assert page.locator("#replication").count() == 1
    shot(page, "ops")
    context.close()


def test_a_client_opening_ops_gets_a_page_with_the_navigation(farm, portal, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 700})
    page = context.new_page()
    page.goto(f"{portal.url}/login")
    page.fill("#username", "acme")
    page.fill("#password", farm.passwords["acme"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/")
    reply = page.goto(f"{portal.url}/ops")
    assert reply is not None and reply.status == 403
    assert "operators only" in page.inner_text("main")
    assert page.locator("header nav a", has_text="Dashboard").count() == 1
    page.click("header nav >> text=Dashboard")
    page.wait_for_url(f"{portal.url}/")
    context.close()


def test_a_client_backfills_a_gap_from_the_task_page(farm, service, portal, browser):
    service.add_task(
        "acme", "gapfill",
        {"kind": "demo.sleep", "input": {"ms": 10}, "schedule": {"every": 60}},
    )  # fmt: skip
    end = farm.now().replace(second=0, microsecond=0) - timedelta(minutes=1)
    start = end - timedelta(minutes=4)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{portal.url}/login")
    page.fill("#username", "acme")
    page.fill("#password", farm.passwords["acme"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/")
    page.goto(f"{portal.url}/tasks/gapfill")
    # A range in the future: the page says which field is at fault and keeps the values.
    page.fill("#backfill-from", to_wire(start))
    page.fill("#backfill-to", to_wire(farm.now() + timedelta(hours=1)))
    page.click("#backfill-submit")
    expect(page.locator("#backfill-errors")).to_contain_text("to: ")
    assert page.input_value("#backfill-from") == to_wire(start)
    page.fill("#backfill-to", to_wire(end))
    page.select_option("#backfill-overlap", "queue")
    page.click("#backfill-submit")
    expect(page.locator("#backfill-result")).to_contain_text("5 runs created, 0 already existed")
    assert page.locator("#history tbody tr", has_text="scheduled").count() == 5
    page.click("#backfill-submit")
    expect(page.locator("#backfill-result")).to_contain_text("0 runs created, 5 already existed")
    context.close()


def test_quorum_runs_in_the_browser(farm, portal, browser):
    """Issue 18: a quorum task's page with a 3-result canonical run and an inconclusive one,
    each run's page, and the operators' list of workers by reliability."""
    now = farm.now().replace(microsecond=0)
    ids = quorum_docs.seed_quorum_task(farm, "acme", "vote", now)
    quorum_docs.seed_reliability(farm, now)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status == 404 or
            r.status >= 500 else None)  # fmt: skip
    page.goto(f"{portal.url}/login")
    page.fill("#username", "acme")
    page.fill("#password", farm.passwords["acme"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/")

    page.goto(f"{portal.url}/tasks/vote")
    page.wait_for_selector("#plot svg")
    canonical = page.locator(f'tr.quorum-row[data-occurrence="{ids["canonical"]}"]')
    expect(canonical.locator(".quorum-outcome")).to_have_text("canonical: w1")
    assert quorum_docs.WHY_CANONICAL in canonical.inner_text()
    assert canonical.locator("tr.slot").count() == 3
    expect(canonical.locator('tr.slot[data-worker="w3"]')).to_contain_text("disagrees")
    inconclusive = page.locator(f'tr.quorum-row[data-occurrence="{ids["inconclusive"]}"]')
    expect(inconclusive.locator(".quorum-outcome")).to_have_text("inconclusive")
    assert inconclusive.locator("tr.slot").count() == 2
    shot(page, "quorum-task")

    page.goto(f"{portal.url}/tasks/vote/occurrences/{ids['canonical']}")
    expect(page.locator("#quorum h2")).to_have_text("3 results of 3 (quorum run)")
    assert page.locator("#quorum tr.slot").first.get_attribute("data-verdict") == "canonical"
    shot(page, "quorum-run")
    page.goto(f"{portal.url}/tasks/vote/occurrences/{ids['inconclusive']}")
    expect(page.locator("#quorum .quorum-outcome")).to_have_text("inconclusive")
    assert page.is_visible("#no-canonical")
    shot(page, "quorum-inconclusive")
    page.click("#logout")
    page.wait_for_url("**/login")

    page.fill("#username", "hub")
    page.fill("#password", farm.passwords["hub"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/")
    page.goto(f"{portal.url}/ops")
    rows = page.locator("#reliability tbody tr")
    assert [rows.nth(k).get_attribute("data-worker") for k in range(rows.count())] == [
        "w3", "w5", "w4", "w2", "w1",
    ]  # fmt: skip
    expect(rows.first).to_contain_text("quarantined")
    page.locator("#reliability-card").scroll_into_view_if_needed()
    shot(page, "ops-reliability")
    assert not errors, errors
    context.close()
