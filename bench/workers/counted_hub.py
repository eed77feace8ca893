"""``python -m hub.cli`` with the hub's own requests counted by what they did (bench only).

``python bench/workers/counted_hub.py COUNTS.json serve --portal-port -1`` runs the real
``hub.cli.main`` unchanged; every ``requests.Session.send`` in the process is wrapped (here,
not in hub/) to count requests by endpoint (``bench.common.endpoint``, ``-> status`` when it
failed) and response bytes, written to COUNTS.json (atomically) every 0.25 s. On CouchDB,
whose ``_stats`` give methods and statuses only, this and the workers' own counts say where
the requests go.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import requests

from bench.common import LogLine, endpoint

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_bytes = {"n": 0}


def _count(request: Any, response: Any) -> None:
    split = urlsplit(request.url)
    path = split.path + (f"?{split.query}" if split.query else "")
    label = endpoint(LogLine(0, request.method, path, response.status_code))
    if response.status_code >= 400:
        label += f" -> {response.status_code}"
    with _lock:
        _counts[label] += 1


def _install() -> None:
    original = requests.Session.send

    def send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        response = original(self, request, **kwargs)
        _count(request, response)
        if not kwargs.get("stream"):
            with _lock:
                _bytes["n"] += len(response.content or b"")
        return response

    requests.Session.send = send  # type: ignore[method-assign]


def _writer(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    while True:
        with _lock:
            data = {"at": time.time(), "endpoints": dict(_counts), "bytes": _bytes["n"]}
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
        time.sleep(0.25)


def main() -> int:
    path = Path(sys.argv[1])
    _install()
    threading.Thread(target=_writer, args=(path,), daemon=True, name="bench-counts").start()
    from hub.cli import main as hub_main

    return hub_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
