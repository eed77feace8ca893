"""Issue 6's fault test, and issue 15's fault matrix: the primary dies, the farm runs on
the standby, a new primary is rebuilt from the standby with `hub recover`, and nothing a
worker was told is stored is lost. The matrix kills the primary a second time, during
`hub recover` or during the fail-back after it, with outages drawn from 5 to 90 s
(`bench/failover.py --matrix` repeats it at full size, on PouchDB or a real CouchDB pair).

The scenario and the audit live in ``tests/faults.py`` (``bench/failover.py`` repeats the
same run at full scale); what "lost" means is defined there. Scale with
COUCHFARM_FAULT_TASKS (default 20; acceptance 100) and COUCHFARM_FAULT_STANDBY_S (default
30; acceptance 60). On PouchDB the test starts its own two servers; on a real CouchDB it
faults the dedicated pair of ``tests/servers.py`` (COUCHDB_FAULT_PRIMARY_URL, ...).
"""

from __future__ import annotations

import os

import pytest

from tests.faults import FaultConfig, run_fault
from tests.servers import fault_servers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


# (second kill, outage range, seed): a fixed seed draws the same kill moments every run.
MATRIX = [
    pytest.param("none", None, 1, id="kill"),
    pytest.param("recover", (5.0, 20.0), 2, id="kill-again-during-recover"),
    pytest.param("failback", (5.0, 20.0), 3, id="kill-again-during-failback"),
]


@pytest.mark.parametrize(("second_kill", "outage_s", "seed"), MATRIX)
def test_primary_dies_farm_goes_on_and_recovery_loses_nothing(
    tmp_path, couch_server, second_kill, outage_s, seed
):
    cfg = FaultConfig(
        tasks=int(os.environ.get("COUCHFARM_FAULT_TASKS", "20")),
        on_standby_s=float(os.environ.get("COUCHFARM_FAULT_STANDBY_S", "30")),
        outage_s=outage_s,
        second_kill=second_kill,
        seed=seed,
    )
    with fault_servers(tmp_path, "primary", "standby", real=couch_server.dev is None) as pair:
        report = run_fault(tmp_path, cfg, pair)
    summary = report.as_dict()
    print(
        f"\nfailover: first claim on the standby {report.failover_s} s after the primary died "
        f"(killed {report.killed_after_s:.1f} s in); {report.stored_runs} results stored, "
        f"{report.occurrences} occurrences, {report.reruns} re-run on the standby, "
        f"{report.rescued} rescued, {report.replaced} later results replaced by an earlier "
        f"one, {report.superseded} superseded by the rule; lag under load "
        f"{summary['lag_seconds']} s, {summary['lag_docs']} docs; at the kill the standby "
        f"lacked {report.exposed_results} 201'd results, the oldest finished "
        f"{report.exposed_window_s} s before"
    )
    print(
        f"outage {report.outage_s} s; second kill: {report.second_kill} "
        f"({report.second_kill_after_s} s in); last recover {report.recover_s} s; hub audit "
        f"clean {report.audit_clean_s} s after the workers stopped"
    )
    print(f"recovery ({'ok' if report.recovery_ok else 'FAILED'}, run {report.seconds} s):")
    print("\n".join(f"  {line}" for line in report.recovery_lines))
    assert report.recovery_ok, "\n".join(report.recovery_lines)
    # The servers agree by themselves (nothing settled by the test): hub audit is clean.
    assert not report.audit_findings, report.audit_findings[:5]
    assert report.stored_runs, "no worker stored any result"
    # 0 results lost that any worker got a 201 for (first finished wins: tests/faults.py).
    assert not report.lost, report.lost[:5]
    # A run that lost to an earlier one is never dropped silently: its worker logs it.
    assert not report.superseded_unlogged, report.superseded_unlogged[:5]
    assert report.not_restored == 0
    assert not report.duplicates, report.duplicates[:5]
    assert not report.conflicts, report.conflicts[:5]
    assert not report.unaccounted, report.unaccounted[:5]
    assert report.occurrences >= cfg.tasks
    assert report.failover_s is not None, "nothing ran after the primary died"
    assert report.lag_seconds, "replication lag was never measured under load"
