"""Context line: the same job shape on beanstalkd (not like-for-like: no replication).

``beanstalkd -l 127.0.0.1 -p FREE_PORT -b BINLOG_DIR -f 0`` (binlog on, fsync after every
write), ``greenstalk`` client. Each repetition uses a fresh tube: one connection puts N jobs
(a ~0.8 KB JSON body, like an occurrence), then W consumer threads, a connection each,
``reserve`` (timeout 0) and ``delete`` until the tube is empty.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import Child, Scale, Section, log, ready_occurrences, summary, wait_for
from hub.devserver import free_port


def run(scale: Scale, workdir: Path) -> Section:
    section = Section(
        "beanstalkd",
        (__doc__ or "").strip().split("\n\n", 1)[1].replace("\n", " ")
        + f" N = {scale.beanstalk_jobs:,}, W = {list(scale.beanstalk_workers)}, "
        + f"{scale.reps} repetitions.",
    )
    binary = shutil.which("beanstalkd")
    try:
        import greenstalk
    except ImportError:
        greenstalk = None
    if binary is None or greenstalk is None:
        section.status = "skipped"
        section.why = "beanstalkd (apt) or greenstalk (pip, the bench extra) is not installed"
        return section
    port = free_port()
    binlog = workdir / "beanstalkd-binlog"
    binlog.mkdir(parents=True, exist_ok=True)
    child = Child(
        [binary, "-l", "127.0.0.1", "-p", str(port), "-b", str(binlog), "-f", "0"],
        log_path=workdir / "beanstalkd.log",
    )

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    body = json.dumps(ready_occurrences(datetime.now(UTC), 1)[0]).encode()
    by_workers: dict[str, Any] = {}
    try:
        wait_for(up, 10, "beanstalkd to listen")
        for workers in scale.beanstalk_workers:
            puts, drains, overall = [], [], []
            for rep in range(scale.reps):
                tube = f"bench-w{workers}-r{rep}"
                producer = greenstalk.Client(("127.0.0.1", port), use=tube)
                began = time.perf_counter()
                for _ in range(scale.beanstalk_jobs):
                    producer.put(body)
                put_s = time.perf_counter() - began
                producer.close()
                done = [0] * workers
                barrier = threading.Barrier(workers + 1)

                def consume(
                    index: int,
                    tube: str = tube,
                    done: list[int] = done,
                    barrier: threading.Barrier = barrier,
                ) -> None:
                    client = greenstalk.Client(("127.0.0.1", port), watch=tube)
                    barrier.wait()
                    while True:
                        try:
                            job = client.reserve(timeout=0)
                        except greenstalk.TimedOutError:
                            break
                        client.delete(job)
                        done[index] += 1
                    client.close()

                threads = [
                    threading.Thread(target=consume, args=(i,), daemon=True) for i in range(workers)
                ]
                for thread in threads:
                    thread.start()
                barrier.wait()
                began = time.perf_counter()
                for thread in threads:
                    thread.join(300)
                drain_s = time.perf_counter() - began
                if sum(done) != scale.beanstalk_jobs:
                    raise RuntimeError(f"beanstalkd: {sum(done)} of {scale.beanstalk_jobs} done")
                puts.append(scale.beanstalk_jobs / put_s)
                drains.append(scale.beanstalk_jobs / drain_s)
                overall.append(scale.beanstalk_jobs / (put_s + drain_s))
            by_workers[str(workers)] = {
                "put_per_s": summary(puts),
                "reserve_delete_per_s": summary(drains),
                "jobs_per_s_put_to_deleted": summary(overall),
            }
            log(
                f"beanstalkd W={workers}: put {[round(x) for x in puts]}/s, "
                f"reserve+delete {[round(x) for x in drains]}/s"
            )
    finally:
        child.terminate(10)
        shutil.rmtree(binlog, ignore_errors=True)
    section.data = {
        "jobs": scale.beanstalk_jobs,
        "fsync": "every write (-f 0)",
        "by_workers": by_workers,
    }
    return section
