"""The local spool: order, states, crash survival, and clear errors when it cannot write."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from desktop_worker.spool import PENDING, UPLOADED, Spool, SpoolError


def doc(n: int) -> dict:
    return {"_id": f"occ:task:acme:t:2026120{n}T000000Z", "_rev": f"2-{n}", "state": "done"}


def test_entries_keep_their_order_and_state(tmp_path):
    spool = Spool(tmp_path / "s.sqlite3")
    seqs = [
        spool.add(doc(n), op="finish", worker="w1", attempt=1, claimed_at=f"c{n}")
        for n in (3, 1, 2)
    ]
    assert [e.doc["_id"] for e in spool.pending()] == [doc(n)["_id"] for n in (3, 1, 2)]
    assert spool.pending()[0].claimed_at == "c3" and spool.pending()[0].attempt == 1
    spool.mark_uploaded(seqs[0], 0)
    spool.note_failure(seqs[1], "no server answered")
    assert spool.counts() == {PENDING: 2, UPLOADED: 1}
    assert [e.seq for e in spool.pending()] == seqs[1:]
    assert spool.pending()[0].tries == 1 and spool.pending()[0].last_error == "no server answered"
    assert spool.awaiting_confirmation()[0].uploaded_to == 0
    spool.replace_doc(seqs[1], {**doc(1), "_rev": "3-x"})
    assert spool.pending()[0].doc["_rev"] == "3-x"
    spool.delete(seqs[0])
    assert spool.counts() == {PENDING: 2, UPLOADED: 0}
    spool.close()
    reopened = Spool(tmp_path / "s.sqlite3")
    assert [e.seq for e in reopened.pending()] == seqs[1:]


def test_spool_is_wal_with_full_sync(tmp_path):
    spool = Spool(tmp_path / "s.sqlite3")
    assert spool._run("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert spool._run("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_spool_survives_kill_9(tmp_path):
    """A write the spool acknowledged is on disk even if the process dies right after."""
    path = tmp_path / "crash.sqlite3"
    script = textwrap.dedent(
        f"""
        import os, signal
        from desktop_worker.spool import Spool
        spool = Spool({str(path)!r})
        for n in range(50):
            spool.add({{"_id": "occ:%d" % n, "_rev": "1-a"}}, op="finish", worker="w1", attempt=1)
        spool.mark_uploaded(1, 0)
        print("written", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "written" in proc.stdout
    spool = Spool(path)
    assert [e.occ_id for e in spool.pending()] == [f"occ:{n}" for n in range(1, 50)]
    assert [e.occ_id for e in spool.awaiting_confirmation()] == ["occ:0"]


def test_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool's directory should be")
    with pytest.raises(SpoolError) as err:
        Spool(blocker / "spool.sqlite3")
    assert "cannot open the spool" in str(err.value) and str(blocker) in str(err.value)


def test_full_disk_is_a_clear_error(tmp_path):
    spool = Spool(tmp_path / "full.sqlite3", max_pages=12)
    big = {"_id": "occ:x", "_rev": "1-a", "output": "x" * 3000}
    with pytest.raises(SpoolError) as err:
        for _ in range(100):
            spool.add(big, op="finish", worker="w1", attempt=1)
    assert "full" in str(err.value) and "full.sqlite3" in str(err.value)
    with pytest.raises(SpoolError):
        spool.check()
    # what was acknowledged before the disk filled up is still there
    assert spool.counts()[PENDING] >= 1


def test_documents_come_back_with_their_key_order(tmp_path):
    """validate_doc_update compares fields with JSON.stringify: key order must survive."""
    spool = Spool(tmp_path / "order.sqlite3")
    original = {"_id": "occ:a", "input": {"zeta": 1, "alpha": {"b": 2, "a": 1}}, "_rev": "2-x"}
    spool.add(original, op="finish", worker="w1", attempt=1)
    back = spool.pending()[0].doc
    assert list(back) == list(original) and list(back["input"]) == ["zeta", "alpha"]
    assert list(back["input"]["alpha"]) == ["b", "a"]
