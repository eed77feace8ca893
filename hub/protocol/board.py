"""The board both sides read: the hub's offers and beat, and who is online.

The hub's dispatcher (``hub/dispatch.py``) writes ``offer:{worker}`` and ``hub:dispatcher``
into ``{db}_board``; the worker's feed follows its own offer and the beat. The timings here
are the contract between the two: a worker leaves rows it was not offered alone until they
are ``OVERDUE_S`` late, and counts a dispatcher silent for longer than its beat as gone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hub.protocol.couch import Couch
from hub.protocol.names import CLAIM_DDOC
from hub.protocol.timefmt import to_wire

OFFER_PREFIX = "offer:"
BEAT_ID = "hub:dispatcher"
BEAT_S = 15.0  # the dispatcher's beat on the board
OFFER_S = 2.0  # an offer lapses this long after the occurrence's not_before
# With a beating dispatcher, workers take rows they were not offered only this late (the
# worker ranking first among its peers; rank r waits r + 1 times as long): well after an
# offer lapsed and went to the next worker, so a late offer never races a rescue.
OVERDUE_S = 8.0
PREFETCH = 1  # offers a worker may hold beyond its free slots, claimed when a run ends
LEAD_S = 8.0  # offered up to this long before not_before (the hub materializes 5 s ahead)
ONLINE_S = 90.0  # a worker whose heartbeat is older is offline (at the shortest keep-alive)
# Each keep-alive is a validated write to the live database (about 15 ms of CouchDB CPU at
# 200 workers, measured): a fixed 60 s period made the fleet's keep-alives cost more than
# its work at 200 workers. So the hub stretches the period with the fleet, keeping all
# keep-alives together near FLEET_KEEPALIVES_PER_S, and announces it in its beat; a worker
# counts as online for ONLINE_FACTOR periods. A dead worker is found sooner by the lapse
# rule (hub/dispatch.py: its offers lapse, and it rests twice as long after each lapse).
KEEPALIVE_S = 60.0
KEEPALIVE_MAX_S = 600.0
FLEET_KEEPALIVES_PER_S = 0.5
ONLINE_FACTOR = ONLINE_S / KEEPALIVE_S
REST_S = 10.0  # a worker that let an offer lapse gets none this long, or until it beats
# Every write to the board wakes every worker's feed (about 0.4 ms of CouchDB CPU per feed
# per write, measured on 3.5.0: 80 ms per write at 200 workers), so the board is written
# only when an offer must reach its worker: WRITE_AHEAD_S before its not_before (what is
# due already, at once). A withdrawal the worker cannot act on wrongly (it claimed the
# occurrence itself, or the offer lapsed) rides along with the next write, or goes out
# after LAZY_WRITE_S at the latest.
WRITE_AHEAD_S = 3.0
LAZY_WRITE_S = 30.0


def keepalive_for(workers: int) -> float:
    """The keep-alive period the hub asks of each worker of a fleet of ``workers``."""
    return min(KEEPALIVE_MAX_S, max(KEEPALIVE_S, workers / FLEET_KEEPALIVES_PER_S))


LEFT_FOR = "left_for"
"""Field of the last beat a hub writes on a server it moved away from: the label of the
server it went to. A worker still there stops waiting for offers at once (and reads the
ready view itself) and checks whether it may move back too, instead of waiting for the
beat to go stale and for its own fail-back period."""


def left_beat(now: datetime, went_to: str) -> dict[str, Any]:
    return {"_id": BEAT_ID, "type": "beat", "at": to_wire(now), "every_s": BEAT_S,
            "overdue_s": OVERDUE_S, LEFT_FOR: went_to}  # fmt: skip


def is_left_beat(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("type") == "beat" and bool(doc.get(LEFT_FOR))


def board_db(db: str) -> str:
    return f"{db}_board"


def offer_doc_id(worker: str) -> str:
    return f"{OFFER_PREFIX}{worker}"


def read_peers(
    couch: Couch, db: str, online_s: float, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Worker docs, as ``workers_by_last_seen`` gives them (with ``_id``, ``type`` and
    ``last_seen``), of the workers seen within ``online_s`` of ``now`` (the server's)."""
    since = to_wire((now or couch.now()) - timedelta(seconds=online_s))
    body = couch.view(db, CLAIM_DDOC, "workers_by_last_seen", startkey=since)
    return [
        {**row["value"], "_id": row["id"], "type": "worker", "last_seen": row["key"]}
        for row in body.get("rows", [])
        if isinstance(row.get("value"), dict)
    ]


def str_items(value: Any) -> frozenset[str]:
    """The strings of a list field of a worker document (``tubes``, ``kinds``); a worker
    document is written by the worker, so anything else in it is ignored, not trusted."""
    return (
        frozenset(v for v in value if isinstance(v, str))
        if isinstance(value, list)
        else frozenset()
    )
