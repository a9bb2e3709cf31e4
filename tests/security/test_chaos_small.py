"""bench/chaos.py at a small size: 40 tasks, 3 `runworker` processes, 3 simulator processes with faults, while
workers are killed and stopped, simulators crash, the scheduler restarts and the database goes away once.
Every task must end completed once (images on disk matching their rows) or failed for a good reason, and no
worker may be left busy. The full run is `make chaos` (python -m bench.chaos)."""

from collections import Counter

import pytest

from bench.chaos import ChaosRun, Params, report
from generation import workflows
from generation.models import WorkflowTemplate
from tests.conftest import child_database_url

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def _templates_back(django_db_blocker):
    """Set up before `transactional_db` (so torn down after its flush): the tests after this one still find
    the templates migration 0002 made."""
    yield
    with django_db_blocker.unblock():
        for name, workflow, bindings in (
            ("sd15-txt2img", workflows.DEFAULT_SD15_WORKFLOW, workflows.DEFAULT_SD15_BINDINGS),
            ("noise-test", workflows.NOISE_TEST_WORKFLOW, workflows.NOISE_TEST_BINDINGS),
        ):
            WorkflowTemplate.objects.get_or_create(
                name=name, defaults={"workflow": workflow, "bindings": bindings}
            )


@pytest.mark.timeout(400)
def test_a_small_chaos_run_loses_and_doubles_nothing(_templates_back, transactional_db, tmp_path):
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
        worker_kill_at=0.05,
    )
    run = ChaosRun(child_database_url(), tmp_path / "chaos", params)
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
    for kind in ("scheduler restart", "database outage", "worker SIGKILL"):
        assert kinds[kind] >= 1, kinds
    assert kinds["simulator SIGKILL"] + kinds["simulator restart"] >= 1, kinds
