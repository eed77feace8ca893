"""hub/protocol/board.py: the board's ids, the beat a departing hub leaves, and the peers
a worker reads (against the real server of the ``farm`` fixture)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.protocol.board import (
    BEAT_ID,
    BEAT_S,
    OVERDUE_S,
    board_db,
    is_left_beat,
    left_beat,
    offer_doc_id,
    read_peers,
    str_items,
)
from hub.protocol.model import WorkerDoc
from hub.protocol.timefmt import to_wire
from tests.conftest import Farm

NOW = datetime(2026, 12, 1, 9, 30, 15, 123_000, tzinfo=UTC)


def test_board_ids() -> None:
    assert board_db("farm") == "farm_board"
    assert offer_doc_id("w1") == "offer:w1"
    assert BEAT_ID == "hub:dispatcher"


def test_left_beat_names_where_the_hub_went() -> None:
    assert left_beat(NOW, "standby.example:5984") == {
        "_id": "hub:dispatcher",
        "type": "beat",
        "at": "2026-12-01T09:30:15.123Z",
        "every_s": BEAT_S,
        "overdue_s": OVERDUE_S,
        "left_for": "standby.example:5984",
    }
    with pytest.raises(ValueError, match="naive"):
        left_beat(NOW.replace(tzinfo=None), "standby")


def test_is_left_beat_only_for_a_beat_that_names_a_server() -> None:
    beat = left_beat(NOW, "standby")
    assert is_left_beat(beat)
    ordinary = {k: v for k, v in beat.items() if k != "left_for"}
    assert not is_left_beat(ordinary)
    for empty in ("", None, 0, []):
        assert not is_left_beat({**beat, "left_for": empty})
    assert not is_left_beat({**beat, "type": "offer"})
    for not_a_doc in (None, "hub:dispatcher", [beat], 1):
        assert not is_left_beat(not_a_doc)


def test_str_items_keeps_only_strings_of_a_list() -> None:
    hostile = ["gpu", 1, None, True, {"tube": "x"}, ["nested"], "gpu", "default", 2.5]
    assert str_items(hostile) == frozenset({"gpu", "default"})
    assert str_items([]) == frozenset()
    for not_a_list in ("gpu", {"gpu": 1}, ("gpu",), None, 7):
        assert str_items(not_a_list) == frozenset()


def _seen(farm: Farm, name: str, last_seen: datetime, tubes: list[str]) -> None:
    doc = WorkerDoc(_id=f"worker:{name}", name=name, version="0.1.0", os="Linux",
                    tubes=tubes, kinds=["demo.sleep"], slots=2, last_seen=to_wire(last_seen),
                    started_at=to_wire(last_seen - timedelta(hours=1))).to_doc()  # fmt: skip
    current = farm.worker(name).get_or_none(farm.db, doc["_id"])
    if current:
        doc["_rev"] = current["_rev"]
    farm.worker(name).put(farm.db, doc)


def test_read_peers_returns_the_workers_seen_within_online_s(farm: Farm) -> None:
    now = farm.now().replace(microsecond=0)
    _seen(farm, "w1", now - timedelta(seconds=90), ["default"])  # exactly at the edge
    _seen(farm, "w2", now - timedelta(seconds=91), ["default"])  # offline
    _seen(farm, "w3", now - timedelta(seconds=5), ["gpu", "default"])
    peers = read_peers(farm.worker("w1"), farm.db, 90.0, now)
    assert [p["_id"] for p in peers] == ["worker:w1", "worker:w3"]  # oldest beat first
    w3 = peers[1]
    assert w3["type"] == "worker" and w3["name"] == "w3"
    assert w3["last_seen"] == to_wire(now - timedelta(seconds=5))
    assert w3["tubes"] == ["gpu", "default"] and w3["slots"] == 2
    assert w3["kinds"] == ["demo.sleep"] and w3["version"] == "0.1.0"
    assert [p["name"] for p in read_peers(farm.worker("w1"), farm.db, 3600.0, now)] == [
        "w2", "w1", "w3",
    ]  # fmt: skip
    assert read_peers(farm.worker("w1"), farm.db, 1.0, now) == []


def test_read_peers_defaults_to_the_servers_clock(farm: Farm) -> None:
    now = farm.now()
    _seen(farm, "w2", now, ["default"])
    _seen(farm, "w3", now - timedelta(hours=2), ["default"])
    _seen(farm, "w1", now - timedelta(hours=2), ["default"])
    assert [p["name"] for p in read_peers(farm.worker("w2"), farm.db, 60.0)] == ["w2"]
