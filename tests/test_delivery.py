"""desktop_worker.delivery: finishing writes through the spool, against the real server."""

from __future__ import annotations

from pathlib import Path

from desktop_worker.delivery import Delivery
from desktop_worker.engine_api import EngineEvent
from desktop_worker.status import EngineStatus
from hub.protocol import states
from hub.protocol.couch import Couch
from hub.protocol.timefmt import from_wire
from tests.collab import leased, worker_config
from tests.conftest import Farm
from tests.test_netguard import closed_port


def delivery_for(couch: Couch, farm: Farm, tmp_path: Path) -> tuple[Delivery, list[EngineEvent]]:
    config = worker_config(farm, tmp_path)
    status = EngineStatus("w1", config.slots)
    events: list[EngineEvent] = []
    status.add_listener(events.append)
    delivery = Delivery(couch, config, status)
    delivery.open_spool()
    assert delivery.spool is not None
    return delivery, events


def test_a_finish_is_spooled_sent_and_counted(farm: Farm, tmp_path: Path) -> None:
    delivery, events = delivery_for(farm.worker("w1"), farm, tmp_path)
    lease = leased(farm, "deliver-done")
    assert lease.lease is not None
    now = farm.now()
    final = states.finish(lease, "w1", now, started_at=now, output={"ok": 1})
    assert delivery.deliver(final.to_doc(), "finish", lease, lease.lease.claimed_at) == "done"
    assert farm.hub.get(farm.db, lease.id)["state"] == "done"
    assert delivery.status.totals["done"] == 1
    assert delivery.spool is not None and delivery.spool.counts()["pending"] == 0  # no standby
    assert any(e.name == "spool_changed" for e in events)
    delivery.close()
    assert delivery.spool is None


def test_a_write_no_server_takes_waits_in_the_spool_until_one_answers(
    farm: Farm, tmp_path: Path
) -> None:
    nowhere = Couch(f"http://127.0.0.1:{closed_port()}", "w1", "pw", retries=0)
    offline, _ = delivery_for(nowhere, farm, tmp_path)
    lease = leased(farm, "deliver-later")
    assert lease.lease is not None
    now = farm.now()
    final = states.finish(lease, "w1", now, started_at=now, output={"ok": 1})
    assert offline.deliver(final.to_doc(), "finish", lease, lease.lease.claimed_at) == "spooled"
    assert offline.status.offline is not None
    offline.close()
    online, events = delivery_for(farm.worker("w1"), farm, tmp_path)  # the same spool file
    assert list(online.upload_pending().values()) == ["done"]
    assert farm.hub.get(farm.db, lease.id)["state"] == "done"
    assert [e.name for e in events if e.occ_id == lease.id] == ["result_uploaded"]
    online.close()


def test_a_finish_after_the_lease_went_elsewhere_is_lost(farm: Farm, tmp_path: Path) -> None:
    delivery, _ = delivery_for(farm.worker("w1"), farm, tmp_path)
    lease = leased(farm, "deliver-lost")
    assert lease.lease is not None
    expired = states.expire(lease, from_wire(lease.lease.expires_at))
    farm.hub.put(farm.db, expired.to_doc())  # the hub reaped it meanwhile
    now = farm.now()
    final = states.finish(lease, "w1", now, started_at=now, output={"ok": 1})
    assert delivery.deliver(final.to_doc(), "finish", lease, lease.lease.claimed_at) == "lost"
    assert delivery.status.totals["lost"] == 1
    delivery.close()
