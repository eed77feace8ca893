"""One PiCaS worker, run with bench/.venv-picas (picas 1.1.2 and its couchdb 1.2 client).

Started by bench/claim_race.py as ``bench/.venv-picas/bin/python bench/workers/picas_claim.py
URL USER PASSWORD_FILE``. It imports nothing from Couchfarm. Same line protocol as
bench/workers/cf_claim.py:

- ``{"cmd": "prepare", "db": DB, "mode": "claim" | "cycle"}`` -> ``{"ready": true}``;
- ``{"cmd": "go", "cap": SECONDS}`` -> ``{"claimed": [ids], "t_end": epoch, ...}``.

``claim`` mode iterates ``picas.iterators.TaskViewIterator`` (whose ``_claim_task`` reads
the ``todo`` view with ``limit=100``, picks a random row, GETs that document and saves it
locked with whatever revision came back). ``cycle`` mode runs a ``picas.actors.RunActor``
whose ``process_task`` marks the token done, so each token costs the whole PiCaS cycle:
view read, GET, PUT lock, PUT done.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from picas.actors import RunActor
from picas.clients import CouchDB
from picas.iterators import TaskViewIterator

logging.getLogger().setLevel(logging.WARNING)


def reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class BenchActor(RunActor):
    """The PiCaS actor loop with an empty payload: the token is marked done at once."""

    def __init__(self, db, claimed, **kwargs):
        super().__init__(db, **kwargs)
        self.claimed = claimed

    def process_task(self, task):
        self.claimed.append(task.id)
        task["exit_code"] = 0
        task.done()


def main() -> int:
    url, user, password_file = sys.argv[1:4]
    password = Path(password_file).read_text().strip()
    database = None
    mode = "claim"
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            return 0
        if command["cmd"] == "prepare":
            database = CouchDB(url=url, db=command["db"], username=user, password=password)
            mode = command.get("mode", "claim")
            reply({"ready": True})
        elif command["cmd"] == "go":
            assert database is not None
            deadline = time.monotonic() + float(command["cap"])
            claimed: list[str] = []
            gave_up = 0
            empty = False
            if mode == "claim":
                iterator = TaskViewIterator(database, "todo")
                while time.monotonic() < deadline:
                    try:
                        task = next(iterator)
                    except StopIteration:
                        empty = True
                        break
                    except OSError:  # "Unable to claim task." after 10 conflicts
                        gave_up += 1
                        continue
                    claimed.append(task.id)
            else:
                actor = BenchActor(database, claimed, view="todo")
                while time.monotonic() < deadline:
                    try:
                        actor.run(max_total_time=max(0.0, deadline - time.monotonic()))
                    except OSError:
                        gave_up += 1
                        continue
                    empty = actor.iterator.is_stopped()
                    break
            reply({"claimed": claimed, "t_end": time.time(), "empty": empty, "gave_up": gave_up})
    return 0


if __name__ == "__main__":
    sys.exit(main())
