"""One Couchfarm claim-race worker: desktop_worker.claim.Claimer, the engine's claim code.

Started by bench/claim_race.py as ``python bench/workers/cf_claim.py URL NAME PASSWORD_FILE``.
Commands, one JSON object per line on stdin; one answer per command on stdout:

- ``{"cmd": "prepare", "db": DB, "k": K or null, "seed": N}`` -> ``{"ready": true}`` (client made,
  credentials checked, connection warm);
- ``{"cmd": "go", "cap": SECONDS}`` -> claims one occurrence at a time until the ready view is
  empty or the cap passes -> ``{"claimed": [ids], "t_end": epoch, "stats": {...}}``;
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from desktop_worker.claim import Claimer, ClaimStats
from desktop_worker.config import DEFAULT_CLAIM_K
from hub.couch import Couch


def reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    url, name, password_file = sys.argv[1:4]
    couch = Couch(url, name, Path(password_file).read_text().strip())
    claimer: Claimer | None = None
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            return 0
        if command["cmd"] == "prepare":
            claimer = Claimer(
                couch,
                command["db"],
                name,
                ["default"],
                k=int(command.get("k") or DEFAULT_CLAIM_K),
                rng=random.Random(command.get("seed")),
            )
            couch.session()  # checks the password, samples the server clock, warms the socket
            reply({"ready": True, "k": claimer.k})
        elif command["cmd"] == "go":
            assert claimer is not None
            deadline = time.monotonic() + float(command["cap"])
            claimed: list[str] = []
            stats = ClaimStats()
            empty = False
            while time.monotonic() < deadline:
                result = claimer.claim(1)
                stats.add(result.stats)
                claimed.extend(occ.id for occ in result.won)
                if not result.won and result.candidates == 0 and not result.contended:
                    empty = True
                    break
            reply(
                {"claimed": claimed, "t_end": time.time(), "empty": empty, "stats": asdict(stats)}
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
