"""Ready buckets: the ready set split by a hash of the occurrence id, each bucket owned by
one online worker (docs/DECISIONS.md decision 18).

The ``ready_buckets`` view (design_docs/claim/views/ready_buckets/map.js) is keyed
``[tube, bucket, queue_at]``. In a backlog with no dispatcher, a worker reads pages of the
buckets it owns, so each row it reads is one it may claim: what it reads per claim stays
the same however many workers race (with a page of the ``ready`` view, a worker claimed
about 1 row in W). Ownership is rendezvous hashing of ``(tube/bucket, worker)`` over the
online workers of the tube, so every worker computes the same owners without asking.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from hub.protocol.states import rendezvous

READY_BUCKETS = 64  # the view's modulus: change both together

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 16777619


def ready_bucket(occ_id: str) -> int:
    """The bucket the ``ready_buckets`` view files ``occ_id`` under (FNV-1a over the id's
    UTF-16 code units, as JavaScript's ``charCodeAt`` sees them, folded to 16 bits)."""
    data = occ_id.encode("utf-16-le", "surrogatepass")
    h = _FNV_OFFSET
    for index in range(0, len(data), 2):
        h ^= data[index] | data[index + 1] << 8
        h = (h * _FNV_PRIME) & 0xFFFFFFFF
    return (h ^ (h >> 16)) % READY_BUCKETS


def bucket_key(tube: str, bucket: int) -> str:
    """What a bucket is ranked by in rendezvous hashing."""
    return f"bucket:{tube}/{bucket}"


def bucket_order(tube: str, worker: str, peers: Iterable[str]) -> tuple[list[int], list[int]]:
    """The buckets of ``tube`` that ``worker`` owns among itself and ``peers``, and the
    others in the order it would take them over (best rendezvous score first, so two idle
    workers seldom turn to the same bucket).

    Each bucket goes to the worker with the best rendezvous score for it that still has
    room: at most ceil(buckets / workers) each. Plain rendezvous gave 0 to 7 of 64 buckets
    to each of 16 workers; a worker with none would always be taking over others' rows."""
    workers = sorted(set(peers) | {worker})
    room = dict.fromkeys(workers, -(-READY_BUCKETS // len(workers)))
    own: list[int] = []
    scored: list[tuple[int, int]] = []
    for bucket in range(READY_BUCKETS):
        key = bucket_key(tube, bucket)
        ranked = sorted((rendezvous(key, name), name) for name in workers)
        owner = next(name for _, name in ranked if room[name] > 0)
        room[owner] -= 1
        if owner == worker:
            own.append(bucket)
        else:
            scored.append((rendezvous(key, worker), bucket))
    return own, [bucket for _, bucket in sorted(scored)]
