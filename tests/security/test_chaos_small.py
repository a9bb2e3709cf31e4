"""bench/chaos.py at a small size: 40 tasks, 3 `runworker` processes, 3 simulator processes with faults, while
workers are killed and stopped and simulators restart (by the clock), and, by phase (a number of finished
tasks), a worker is killed, the scheduler restarts, the database goes away and a simulator crashes.
Every task must end completed once (images on disk matching their rows) or failed for a good reason, no
worker may be left busy, and every scheduled fault must have fired with work after it, however fast the
machine. The full run is `make chaos` (python -m bench.chaos)."""

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
    scheduled = [(fault.kind, fault.phase) for fault in run.faults if fault.phase is not None]
    expected = ["worker SIGKILL", "scheduler restart", "database outage", "simulator SIGKILL"]
    assert scheduled == list(zip(expected, range(4), strict=True)), run.faults
    for fault in run.faults:
        if fault.phase is not None:  # it fired at its phase, before the tasks after it were submitted
            assert fault.finished >= run.phases[fault.phase].trigger
            assert fault.finished <= run.phases[fault.phase].gate
