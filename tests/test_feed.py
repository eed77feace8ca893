"""desktop_worker.feed: the worker's board feed into its ready set.

Against the real server: an offer reaches the ready set and wakes the claim loop; the feed
rebinds to the standby when the client fails over; who is online is read again while the
stream runs. The switch to longpoll after two silent streams is the feed's own logic and
needs a stream that connects and then says nothing, which an in-memory client gives.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from desktop_worker import feed as feed_module
from desktop_worker.feed import ClaimFeed
from desktop_worker.readyset import ReadySet
from hub.dispatch import Board
from hub.protocol import states
from hub.protocol.couch import Couch, StreamBrokeOff
from hub.protocol.model import Task, task_id, worker_id
from hub.protocol.timefmt import to_wire
from tests.conftest import Farm
from tests.waiting import wait_for


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@contextmanager
def running(feed: ClaimFeed) -> Iterator[ClaimFeed]:
    thread = threading.Thread(target=feed.run, name="test-feed", daemon=True)
    thread.start()
    try:
        yield feed
    finally:
        feed.stopping.set()
        thread.join(timeout=20)  # a stream ends at its next heartbeat (5 s)


def make_feed(couch: Couch, db: str, wake: Callable[[], None], **kwargs: Any) -> ClaimFeed:
    ready_set = ReadySet("w1", ["default"], None)
    return ClaimFeed(
        couch, db, "w1", ["default"], ready_set, wake=wake, stopping=threading.Event(), **kwargs
    )


def ready_doc(hub: Couch, db: str, slug: str) -> dict[str, Any]:
    now = hub.now().replace(microsecond=0)
    stamp = to_wire(now)
    task = Task(
        _id=task_id("acme", slug),
        client="acme",
        slug=slug,
        kind="demo.sleep",
        input={"ms": 0},
        schedule={"every": 60},
        created_at=stamp,
        updated_at=stamp,
    )
    occ = states.materialize(task, now - timedelta(seconds=1), now)
    hub.put(db, occ.to_doc())
    return hub.get(db, occ.id)


def test_an_offer_reaches_the_ready_set_and_wakes_the_claim_loop(farm: Farm) -> None:
    wakes = Wakes()
    feed = make_feed(farm.worker("w1"), farm.db, wakes)
    with running(feed):
        wait_for(lambda: feed.ready_set.live, timeout=20)
        woken = wakes.count
        offered = ready_doc(farm.hub, farm.db, "feed-offer")
        Board(farm.hub, farm.db).publish({"w1": [offered]}, farm.now())
        wait_for(lambda: len(feed.ready_set) == 1 and wakes.count > woken, timeout=20)
        assert not feed.longpoll  # a stream that speaks stays a stream


def test_the_feed_rebinds_to_the_server_the_client_fails_over_to(
    farm_on_both: Any, passwords: dict[str, str]
) -> None:
    db, primary, standby = farm_on_both("feed_failover")
    hubs = [primary.couch(), standby.couch()]
    worker = Couch([primary.url, standby.url], "w1", passwords["w1"], home_db=db)
    wakes = Wakes()
    feed = make_feed(worker, db, wakes)
    with running(feed):
        wait_for(lambda: feed.ready_set.live, timeout=20)
        epoch = feed.ready_set.epoch
        worker._active = 1  # what a failed request to the primary does (as in test_resolver)
        # The feed notices at the stream's next heartbeat and starts again on the standby.
        wait_for(lambda: feed.ready_set.epoch > epoch, timeout=20)
        offered = ready_doc(hubs[1], db, "feed-standby")
        Board(hubs[1], db).publish({"w1": [offered]}, hubs[1].now())
        wait_for(lambda: len(feed.ready_set) == 1, timeout=20)


def test_who_is_online_is_read_again_while_the_stream_runs(
    farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "PEERS_EVERY_S", 0.0)  # at every heartbeat row
    feed = make_feed(farm.worker("w1"), farm.db, Wakes())
    with running(feed):
        wait_for(lambda: feed.ready_set.live, timeout=20)
        assert "w2" not in feed.ready_set.online_peers("default", farm.now())
        farm.worker("w2").put(
            farm.db,
            {
                "_id": worker_id("w2"),
                "type": "worker",
                "name": "w2",
                "version": "0.1.0",
                "os": "test",
                "tubes": ["default"],
                "kinds": ["demo.sleep"],
                "slots": 1,
                "state": "running",
                "last_seen": to_wire(farm.now()),
                "started_at": to_wire(farm.now()),
                "current": [],
                "totals": {"done": 0, "failed": 0, "lost": 0},
            },
        )
        wait_for(lambda: "w2" in feed.ready_set.online_peers("default", farm.now()), timeout=30)


# ---------------------------------------------------------------- longpoll (in memory)


class SilentServer:
    url = "http://silent.invalid:5984"


class SilentStreams:
    """A client whose streams connect and then say nothing (a buffering proxy), and whose
    longpoll answers at once; records which of the two the feed used. (The feed backs off
    2 s, then 4 s, after each silent stream, as after any unavailable server.)"""

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        self.active = SilentServer()
        self.servers = [self.active]
        self.retries = 2
        self.streams = 0
        self.longpolls = 0

    def for_server(self, index: int) -> SilentStreams:
        return self

    def now(self) -> Any:
        from datetime import UTC, datetime

        return datetime.now(UTC)

    def view(self, db: str, ddoc: str, view: str, **params: Any) -> dict[str, Any]:
        return {"rows": []}

    def changes_stream(self, db: str, **params: Any) -> Iterator[dict[str, Any] | None]:
        self.streams += 1
        raise StreamBrokeOff("connected, then silent")
        yield None  # pragma: no cover - a generator that never yields

    def changes(self, db: str, **params: Any) -> tuple[list[dict[str, Any]], str]:
        assert params.get("feed") == "longpoll"
        self.longpolls += 1
        self.stopping.set()  # one longpoll is the answer
        return [], "1"


def test_after_two_silent_streams_the_feed_falls_back_to_longpoll() -> None:
    stopping = threading.Event()
    client = SilentStreams(stopping)
    ready_set = ReadySet("w1", ["default"], None)
    feed = ClaimFeed(
        client,  # type: ignore[arg-type]
        "farm",
        "w1",
        ["default"],
        ready_set,
        wake=Wakes(),
        stopping=stopping,
        error_wait_s=0.0,
    )
    thread = threading.Thread(target=feed.run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert client.streams == feed_module.SILENT_STREAMS_BEFORE_LONGPOLL == 2
    assert feed.longpoll and client.longpolls == 1
