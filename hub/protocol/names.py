"""Database names and roles that the hub, the worker and the portal must spell alike."""

from __future__ import annotations

from datetime import datetime

from hub.protocol.timefmt import month_key

ADMIN_ROLE = "farm_admin"
WORKER_ROLE = "farm_worker"
CLIENT_ROLE_PREFIX = "client:"
DEFAULT_DB = "farm"
# The live database's views that the claim path reads (``ready``, ``ready_buckets``,
# ``workers_by_last_seen``) live in their own design document: on CouchDB a view read
# brings its whole design document's index up to date, and the workers read these many
# times a second, so they must not pay for the hub's 14 other views (docs/DECISIONS.md
# decision 19). ``_design/farm`` keeps the rest and ``validate_doc_update``.
CLAIM_DDOC = "claim"


def results_db(live_db: str, moment: datetime) -> str:
    return f"{live_db}_results_{month_key(moment)}"


def is_results_db(live_db: str, name: str) -> bool:
    """``farm_results_2026_11`` for live db ``farm``: exactly YYYY_MM after the prefix."""
    prefix = f"{live_db}_results_"
    rest = name[len(prefix) :]
    return (
        name.startswith(prefix) and len(rest) == 7 and rest[4] == "_"
        and rest[:4].isdigit() and rest[5:].isdigit()
    )  # fmt: skip
