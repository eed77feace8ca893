"""Alerts (hub/alerts.py, hub/notify.py): transitions with a threshold, each sent exactly
once by two hubs and across restarts, retried with backoff, every attempt recorded; against
the real server, a real local HTTP receiver and a real local SMTP server (tests/receivers.py)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from hub import alerts
from hub.alerts import (
    CLAIM_S,
    MAX_ALERT_ATTEMPTS,
    Health,
    alert_backoff_s,
    alert_id,
    claim_alert,
    health_id,
    new_alert,
    settle_alert,
    with_transition,
)
from hub.notify import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryError,
    SmtpSettings,
    check_webhook_url,
    sign_webhook,
    verify_webhook,
)
from hub.serve import Hub, HubConfig
from hub.service import FarmService, ServiceError
from tests import cluster
from tests.receivers import SmtpSink, WebhookReceiver, closed_port
from tests.test_alerts import run_once
from tests.test_hub import FakeClock, add_task, recent_minute

T0 = datetime(2026, 12, 1, tzinfo=UTC)


# ---------------------------------------------------------------- pure


def test_a_transition_needs_the_threshold_and_recovers_at_the_first_success():
    health = Health("task:acme:ping", "acme", streak=1)
    assert with_transition(health, 2) == health  # one failure: not yet failing
    assert with_transition(health, None) == health  # alerts off
    failing = with_transition(Health("task:acme:ping", "acme", streak=2), 2)
    assert failing.failing and failing.alert_seq == 1
    # More failures: still the same transition.
    assert with_transition(Health("t", "c", streak=3, failing=True, alert_seq=1), 2).alert_seq == 1
    recovered = with_transition(Health("t", "c", streak=0, failing=True, alert_seq=1), 2)
    assert not recovered.failing and recovered.alert_seq == 2


def test_backoff_doubles_up_to_an_hour_and_attempts_end_in_failed():
    assert [alert_backoff_s(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert alert_backoff_s(30) == 3600.0
    doc = claim_alert(new_alert(Health("task:acme:p", "acme", 2, failing=True, alert_seq=1), T0),
                      "hub-a", T0, ["webhook", "email"])  # fmt: skip
    assert doc["channels"] == {"webhook": "pending", "email": "pending"}
    once = settle_alert(doc, {"webhook": (True, "HTTP 204"), "email": (False, "email: down")}, T0)
    assert once["state"] == "pending" and once["channels"]["webhook"] == "delivered"
    assert once["next_attempt_at"] == "2026-12-01T00:00:05.000Z" and once["claimed_by"] is None
    last = once
    for _ in range(MAX_ALERT_ATTEMPTS - 1):
        last = settle_alert(last, {"email": (False, "email: down")}, T0)
    assert last["state"] == "failed" and last["channels"] == {"webhook": "delivered",
                                                               "email": "failed"}  # fmt: skip
    assert len(last["attempts"]) == MAX_ALERT_ATTEMPTS + 1
    assert (
        settle_alert(claim_alert(new_alert(Health("t", "c"), T0), "h", T0, []), {}, T0)["state"]
        == "no_channel"
    )


def test_the_webhook_signature_verifies_and_refuses_tampering_and_replays():
    body = b'{"event":"task.failing"}'
    signature = sign_webhook("s3cret", 1_800_000_000, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify_webhook("s3cret", body, signature, "1800000000", now_s=1_800_000_010)
    assert not verify_webhook("s3cret", body + b" ", signature, "1800000000", 1_800_000_010)
    assert not verify_webhook("other", body, signature, "1800000000", 1_800_000_010)
    assert not verify_webhook("s3cret", body, signature, "1800000000", 1_800_001_000)


def test_webhooks_to_private_addresses_are_refused_unless_allowed():
    with pytest.raises(DeliveryError, match=r"^webhook: .*private address"):
        check_webhook_url("http://127.0.0.1:9/hook", allow_private=False)
    with pytest.raises(DeliveryError, match=r"^webhook: .*not an http"):
        check_webhook_url("ftp://example.org/", allow_private=True)
    check_webhook_url("http://127.0.0.1:9/hook", allow_private=True)


# ---------------------------------------------------------------- real server


@pytest.fixture
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def smtp():
    sink = SmtpSink()
    yield sink
    sink.close()


@pytest.fixture(autouse=True)
def clean(farm):
    yield
    rows = [
        row
        for prefix in ("task:", "occ:", "hub:health:", "hub:alert:", "hub:client:")
        for row in farm.admin.all_docs(farm.db, startkey=prefix, endkey=prefix + "\ufff0")
    ]
    farm.admin.bulk_docs(
        farm.db, [{"_id": r["id"], "_rev": r["value"]["rev"], "_deleted": True} for r in rows]
    )


def alerting_hub(farm, clock, smtp_port: int) -> Hub:
    config = HubConfig(
        db=farm.db,
        smtp=SmtpSettings(host="127.0.0.1", port=smtp_port, sender="hub@farm.test"),
        alerts_allow_private=True,  # the receivers listen on 127.0.0.1
    )
    hub = Hub(farm.hub, config, clock=clock)
    hub.load()
    return hub


def test_each_transition_is_sent_once_by_two_hubs_and_after_a_restart(farm, webhook, smtp):
    service = FarmService(farm.hub, farm.db)
    settings = service.set_alert_settings(
        "acme", {"webhook_url": webhook.url, "email": "ops@acme.example"}
    )
    secret = settings["webhook_secret"]
    assert secret and len(secret) == 64
    clock = FakeClock(recent_minute(farm) + timedelta(seconds=0.1))
    task = add_task(farm, "watched", clock, alert_after_failures=2, overlap="allow",
                    schedule={"every": 30})  # fmt: skip
    hub, other = alerting_hub(farm, clock, smtp.port), alerting_hub(farm, clock, smtp.port)

    run_once(farm, hub, clock, task, ok=False)  # one failure: below the threshold
    assert hub.send_alerts() == 0 and webhook.requests == []
    run_once(farm, hub, clock, task, ok=False)
    other.follow_once(wait=5)
    other.watch_health()  # the second hub sees the same run: no second transition
    hub.follow_once(wait=5)
    other.follow_once(wait=5)
    delivered = hub.send_alerts() + other.send_alerts()
    assert delivered == 2  # webhook + email, by one hub
    assert other.send_alerts() == 0 and hub.send_alerts() == 0

    [hit] = webhook.requests
    payload = json.loads(hit.body)
    assert payload["event"] == "task.failing" and payload["streak"] == 2
    assert payload["alert"] == alert_id(task.id, 1)
    assert verify_webhook(secret, hit.body, hit.headers[SIGNATURE_HEADER],
                          hit.headers[TIMESTAMP_HEADER], now_s=clock.now.timestamp())  # fmt: skip
    [mail] = smtp.messages
    assert mail.recipients == ["ops@acme.example"] and "acme/watched is failing" in mail.data
    doc = farm.admin.get(farm.db, alert_id(task.id, 1))
    assert doc["state"] == "delivered" and doc["attempt_count"] == 1
    assert {a["channel"] for a in doc["attempts"]} == {"webhook", "email"}

    # A third failure: still failing, no new alert. Then a success: "recovered", once.
    run_once(farm, hub, clock, task, ok=False)
    hub.follow_once(wait=5)
    assert hub.send_alerts() == 0
    run_once(farm, hub, clock, task, ok=True)
    hub.follow_once(wait=5)
    other.follow_once(wait=5)
    assert hub.send_alerts() + other.send_alerts() == 2
    assert [json.loads(r.body)["event"] for r in webhook.requests] == [
        "task.failing", "task.recovered",
    ]  # fmt: skip
    assert len(smtp.messages) == 2 and "recovered" in smtp.messages[1].data

    # A restarted hub finds everything delivered: nothing is sent again.
    restarted = alerting_hub(farm, clock, smtp.port)
    clock.advance(hours=2)
    assert restarted.send_alerts() == 0
    assert len(webhook.requests) == 2 and len(smtp.messages) == 2
    alerts_seen = service.task_alerts("acme", "watched")
    assert [a["transition"] for a in alerts_seen] == ["recovered", "failing"]


def test_dead_channels_are_logged_retried_with_backoff_then_delivered(farm, webhook, smtp, caplog):
    service = FarmService(farm.hub, farm.db)
    dead_url = f"http://127.0.0.1:{closed_port()}/hook"
    service.set_alert_settings("acme", {"webhook_url": dead_url, "email": "ops@acme.example"})
    clock = FakeClock(recent_minute(farm) + timedelta(seconds=0.1))
    task = add_task(farm, "deadends", clock, alert_after_failures=1, overlap="allow",
                    schedule={"every": 30})  # fmt: skip
    hub = alerting_hub(farm, clock, closed_port())  # no SMTP server there either
    run_once(farm, hub, clock, task, ok=False)
    hub.follow_once(wait=5)
    with caplog.at_level(logging.ERROR, logger="couchfarm.alerts"):
        assert hub.send_alerts() == 0  # no crash
    failures = [r.getMessage() for r in caplog.records if "alert_attempt_failed" in r.getMessage()]
    assert any("channel=webhook" in line and dead_url in line for line in failures)
    assert any("channel=email" in line and "SMTP 127.0.0.1" in line for line in failures)
    doc = farm.admin.get(farm.db, alert_id(task.id, 1))
    assert doc["state"] == "pending" and doc["attempt_count"] == 1
    assert all(not a["ok"] for a in doc["attempts"]) and len(doc["attempts"]) == 2
    hub.follow_once(wait=5)
    assert hub.send_alerts() == 0  # the backoff has not passed: no attempt
    assert farm.admin.get(farm.db, alert_id(task.id, 1))["attempt_count"] == 1

    # The client fixes the URL; the operator's mail server comes back. After the backoff:
    service.set_alert_settings("acme", {"webhook_url": webhook.url})
    hub.alert_sender.smtp = SmtpSettings(host="127.0.0.1", port=smtp.port)
    clock.advance(seconds=alert_backoff_s(1) + 0.5)
    assert hub.send_alerts() == 2
    doc = farm.admin.get(farm.db, alert_id(task.id, 1))
    assert doc["state"] == "delivered" and doc["attempt_count"] == 2
    assert [a["ok"] for a in doc["attempts"]] == [False, False, True, True]
    assert len(webhook.requests) == 1 and len(smtp.messages) == 1


def test_a_transition_counted_before_a_crash_is_raised_at_the_next_start(farm, webhook, smtp):
    FarmService(farm.hub, farm.db).set_alert_settings("acme", {"webhook_url": webhook.url})
    clock = FakeClock(recent_minute(farm) + timedelta(seconds=0.1))
    task = add_task(farm, "crashed", clock, alert_after_failures=1)
    # The count was written (alert_seq 1) but the hub died before the alert document.
    health = Health(task.id, "acme", streak=1, pause_streak=1, failing=True, alert_seq=1,
                    last_occurrence="occ:x", last_due="2026-12-01T00:00:00.000Z")  # fmt: skip
    farm.admin.put(farm.db, health.to_doc(None))
    hub = alerting_hub(farm, clock, smtp.port)
    assert farm.admin.get(farm.db, alert_id(task.id, 1))["transition"] == "failing"
    alerting_hub(farm, clock, smtp.port)  # a second start: the 409 is harmless
    assert hub.send_alerts() == 1 and len(webhook.requests) == 1
    assert farm.admin.get(farm.db, health_id(task.id))["alert_seq"] == 1


def test_a_task_without_channels_records_why(farm, smtp):
    clock = FakeClock(recent_minute(farm) + timedelta(seconds=0.1))
    task = add_task(farm, "nochannel", clock, alert_after_failures=1, overlap="allow",
                    schedule={"every": 30})  # fmt: skip
    hub = alerting_hub(farm, clock, smtp.port)
    run_once(farm, hub, clock, task, ok=False)
    hub.follow_once(wait=5)
    assert hub.send_alerts() == 0
    assert farm.admin.get(farm.db, alert_id(task.id, 1))["state"] == "no_channel"


def test_alert_settings_refuse_bad_input_naming_the_field(farm):
    service = FarmService(farm.hub, farm.db)
    with pytest.raises(ServiceError) as caught:
        service.set_alert_settings("acme", {"webhook_url": "not a url", "email": "nobody"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["webhook_url", "email"]
    first = service.set_alert_settings("acme", {"webhook_url": "https://example.org/h"})
    again = service.set_alert_settings("acme", {"email": "ops@example.org"})
    assert again["webhook_secret"] == first["webhook_secret"]  # kept unless asked
    rotated = service.set_alert_settings("acme", {}, new_secret=True)
    assert rotated["webhook_secret"] != first["webhook_secret"]
    cleared = service.set_alert_settings("acme", {"webhook_url": "", "email": ""})
    assert cleared["webhook_url"] is None and cleared["email"] is None
    assert alerts.client_settings_id("acme") == "hub:client:acme"


# ---------------------------------------------------------------- portal and API


@pytest.fixture
def portal(farm):
    from fastapi.testclient import TestClient

    from hub.portal.app import create_app

    app = create_app(FarmService(farm.hub, farm.db), farm.hub, secret_key="a" * 40)

    def login(user: str) -> TestClient:
        client = TestClient(app)
        reply = client.post("/login", data={"username": user, "password": farm.passwords[user]})
        assert reply.status_code == 200, reply.text
        client.headers["X-CSRF-Token"] = reply.json()["csrf_token"]
        return client

    return login


def test_settings_page_and_api_are_per_client(farm, portal):
    acme, globex = portal("acme"), portal("globex")
    page = acme.get("/settings", headers={"Accept": "text/html"})
    assert page.status_code == 200 and 'name="webhook_url"' in page.text
    channels = {"webhook_url": "https://example.org/h", "email": "ops@acme.example"}
    saved = acme.post("/settings", data=channels, follow_redirects=False)
    assert saved.status_code == 303
    shown = acme.get("/settings", headers={"Accept": "text/html"}).text
    secret = acme.get("/api/settings/alerts").json()["webhook_secret"]
    assert secret in shown and "Alert settings saved" not in shown  # message only via ?done=
    bad = acme.post("/settings", data={"webhook_url": "nope", "email": ""},
                    headers={"Accept": "text/html"})  # fmt: skip
    assert bad.status_code == 400 and "webhook_url: " in bad.text
    assert globex.get("/api/settings/alerts").json()["webhook_url"] is None
    put = globex.put("/api/settings/alerts", json={"email": "x"})
    assert put.status_code == 400 and put.json()["problems"][0].startswith("email: ")
    rotated = acme.put("/api/settings/alerts", json={"new_secret": True}).json()
    assert rotated["webhook_secret"] != secret and rotated["email"] == "ops@acme.example"


def test_the_task_page_and_api_show_every_attempt(farm, portal, webhook, smtp):
    acme = portal("acme")
    acme.put("/api/settings/alerts", json={"webhook_url": webhook.url})
    made = acme.post("/api/tasks", json={"name": "shown", "kind": "demo.sleep",
                                         "input": {"ms": 1}, "schedule": {"every": 30},
                                         "alert_after_failures": 1, "overlap": "allow",
                                         "alert_channels": ["webhook"]})  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["alert_after_failures"] == 1
    clock = FakeClock(farm.now())  # the task was created now: its fires come from here
    hub = alerting_hub(farm, clock, smtp.port)
    task = FarmService(farm.hub, farm.db).get_task("acme", "shown")
    webhook.status = 500  # the receiver fails the first attempt
    run_once(farm, hub, clock, task, ok=False)
    hub.follow_once(wait=5)
    hub.send_alerts()
    webhook.status = 204
    clock.advance(seconds=10)
    assert hub.send_alerts() == 1
    body = acme.get("/api/tasks/shown/alerts").json()
    assert body["health"]["failing"] is True
    [alert] = body["alerts"]
    assert alert["state"] == "delivered"
    assert [(a["ok"], a["detail"]) for a in alert["attempts"]] == [
        (False, f"webhook: POST {webhook.url} answered HTTP 500"), (True, "HTTP 204"),
    ]  # fmt: skip
    page = acme.get("/tasks/shown", headers={"Accept": "text/html"}).text
    assert 'id="alerts"' in page and "answered HTTP 500" in page and "HTTP 204" in page
    assert portal("globex").get("/api/tasks/shown/alerts").status_code == 404


def test_two_hubs_sending_at_the_same_moment_deliver_once(farm, webhook, smtp):
    import threading

    FarmService(farm.hub, farm.db).set_alert_settings("acme", {"webhook_url": webhook.url})
    clock = FakeClock(recent_minute(farm) + timedelta(seconds=0.1))
    task = add_task(farm, "raced", clock, alert_after_failures=1, overlap="allow",
                    schedule={"every": 30})  # fmt: skip
    hubs = [alerting_hub(farm, clock, smtp.port) for _ in range(3)]
    run_once(farm, hubs[0], clock, task, ok=False)
    for hub in hubs:
        hub.follow_once(wait=5)
    start = threading.Barrier(len(hubs))
    delivered: list[int] = []

    def send(hub: Hub) -> None:
        start.wait()
        delivered.append(hub.send_alerts())

    threads = [threading.Thread(target=send, args=(hub,)) for hub in hubs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if farm.hub.majority(farm.db) > 1 and sum(delivered) == 0:
        # A cluster: each copy may have taken a different hub's claim, so that none holds a
        # majority (202 for all). Nobody sent; the alert is tried again once the claims end.
        cluster.settle(farm.hub, farm.db)
        clock.advance(seconds=CLAIM_S + 1)
        delivered.append(hubs[0].send_alerts())
    assert sorted(delivered)[-1] == 1 and sum(delivered) == 1  # one claim won; the rest 409
    assert len(webhook.requests) == 1
    doc = farm.admin.get(farm.db, alert_id(task.id, 1))
    assert doc["state"] == "delivered" and len(doc["attempts"]) == 1


def test_the_form_reads_alert_fields():
    from hub.portal.forms import form_from_task, spec_from_form
    from hub.protocol.model import Task

    form = {"kind": "demo.sleep", "schedule_mode": "every", "schedule.every": "60",
            "alert_after_failures": "3", "alert_channel.email": "on"}  # fmt: skip
    spec, problems = spec_from_form(form)
    assert problems == [] and spec["alert_after_failures"] == 3
    assert spec["alert_channels"] == ["email"]
    without = {k: v for k, v in form.items() if k != "alert_channel.email"}
    assert spec_from_form(without)[0]["alert_channels"] is None  # none ticked: every channel
    stamp = "2026-01-01T00:00:00.000Z"
    task = Task(_id="task:acme:f", client="acme", slug="f", kind="demo.sleep",
                schedule={"every": 60}, alert_after_failures=3, alert_channels=["email"],
                created_at=stamp, updated_at=stamp)  # fmt: skip
    values = form_from_task(task)
    assert values["alert_after_failures"] == "3" and values["alert_channel.email"] == "on"
