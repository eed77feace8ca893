"""Design documents from ``design_docs/``: loaded from plain .js files, pushed when changed.

Layout: ``design_docs/<name>/validate_doc_update.js`` and
``design_docs/<name>/views/<view>/map.js`` (+ optional ``reduce.js``) and
``design_docs/<name>/filters/<filter>.js`` and ``design_docs/<name>/updates/<function>.js``
(update functions: ``_design/farm/_update/slot``, decision 17) become ``_design/<name>``.
Ops read the same text in Fauxton.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.protocol.couch import Couch
from hub.protocol.names import CLAIM_DDOC

DESIGN_ROOT = Path(__file__).resolve().parent.parent / "design_docs"
FARM_DDOC = "farm"
# The claim path's views, apart from the hub's (hub.protocol.names.CLAIM_DDOC). The live
# database holds both; ``LIVE_DDOCS`` is the order ``hub init`` pushes them in: the claim
# views exist before an update of ``_design/farm`` drops its old copies of them.
LIVE_DDOCS = (CLAIM_DDOC, FARM_DDOC)
RESULTS_DDOC = "results"
BOARD_DDOC = "board"


def function_source(text: str) -> str:
    """The file's function, with its leading ``//`` comment block moved inside the body.

    CouchDB and PouchDB evaluate the text as one expression that must be a function, so
    nothing may precede ``function``; the comments still show in Fauxton this way.
    """
    lines = text.strip().splitlines()
    header = []
    while lines and (lines[0].startswith("//") or not lines[0].strip()):
        header.append(lines.pop(0))
    body = "\n".join(lines)
    if not header or not body.startswith("function"):
        return body
    brace = body.index("{") + 1
    comments = "\n".join("  " + line for line in header if line.strip())
    return body[:brace] + "\n" + comments + body[brace:]


def load(name: str, root: Path = DESIGN_ROOT) -> dict[str, Any]:
    folder = root / name
    if not folder.is_dir():
        raise FileNotFoundError(f"no design document folder {folder}")
    doc: dict[str, Any] = {"_id": f"_design/{name}", "language": "javascript"}
    vdu = folder / "validate_doc_update.js"
    if vdu.exists():
        doc["validate_doc_update"] = function_source(vdu.read_text())
    views: dict[str, dict[str, str]] = {}
    for view_dir in sorted((folder / "views").glob("*")):
        if not (view_dir / "map.js").exists():
            continue
        view = {"map": function_source((view_dir / "map.js").read_text())}
        if (view_dir / "reduce.js").exists():
            view["reduce"] = function_source((view_dir / "reduce.js").read_text())
        views[view_dir.name] = view
    if views:
        doc["views"] = views
    filters = {
        path.stem: function_source(path.read_text())
        for path in sorted((folder / "filters").glob("*.js"))
    }
    if filters:
        doc["filters"] = filters
    updates = {
        path.stem: function_source(path.read_text())
        for path in sorted((folder / "updates").glob("*.js"))
    }
    if updates:
        doc["updates"] = updates
    return doc


@dataclass
class PushReport:
    db: str
    ddoc: str
    action: str  # "created", "updated", "unchanged"
    changed: list[str]

    def __str__(self) -> str:
        detail = f" ({', '.join(self.changed)})" if self.changed else ""
        return f"{self.db}/_design/{self.ddoc}: {self.action}{detail}"


def _parts(doc: dict[str, Any]) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    for key, value in doc.items():
        if key.startswith("_"):
            continue
        if key in ("views", "filters", "updates"):
            for part, funcs in value.items():
                parts[f"{key}.{part}"] = funcs
        else:
            parts[key] = value
    return parts


def push(couch: Couch, db: str, name: str, root: Path = DESIGN_ROOT) -> PushReport:
    """Write ``_design/<name>`` to ``db`` only if it differs; say what changed."""
    wanted = load(name, root)
    current = couch.get_or_none(db, wanted["_id"])
    if current is None:
        couch.put(db, wanted)
        return PushReport(db, name, "created", sorted(_parts(wanted)))
    old, new = _parts(current), _parts(wanted)
    changed = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    if not changed:
        return PushReport(db, name, "unchanged", [])
    couch.put(db, {**wanted, "_rev": current["_rev"]})
    return PushReport(db, name, "updated", changed)
