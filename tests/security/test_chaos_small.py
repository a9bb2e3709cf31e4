"""bench/chaos.py at a small size: 40 tasks, 3 `runworker` processes, 3 simulator processes with faults, while
workers are killed and stopped, simulators crash, the scheduler restarts and the database goes away once.
Every task must end completed once (images on disk matching their rows) or failed for a good reason, and no
worker may be left busy. The full run is `make chaos` (python -m bench.chaos)."""

from collections import Counter

import pytest

from bench.chaos import ChaosRun, Params, report
from tests.e2e.conftest import _default_templates, test_database_url  # noqa: F401 - a fixture

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.timeout(400)
def test_a_small_chaos_run_loses_and_doubles_nothing(_default_templates, tmp_path):  # noqa: F811
    params = Params(
        tasks=40,
        workers=3,
        timeout=240,
        kill_every=3.0,
        term_every=5.0,
        simulator_restart_every=4.0,
        db_outage=2.0,
        scheduler_restart_at=0.15,
        db_outage_at=0.35,
        simulator_kill_at=0.55,
    )
    run = ChaosRun(test_database_url(), tmp_path / "chaos", params)
    try:
        result = run.run()
    finally:
        run.stop()
    verdict = run.check()
    report(run, result, verdict)  # shown with -s, or when the test fails

    counts = verdict["counts"]
    assert verdict["violations"] == []
    assert result["busy_workers"] == []
    assert counts["completed"] + counts["failed"] == params.tasks
    assert counts["completed"] >= params.tasks * 0.8  # failures come only from the injected errors
    kinds = Counter(fault.kind for fault in run.faults)
    for kind in ("scheduler restart", "database outage", "worker SIGKILL", "simulator SIGKILL"):
        assert kinds[kind] >= 1, kinds
