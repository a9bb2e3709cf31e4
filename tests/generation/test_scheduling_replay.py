"""The scheduling replay's daemons (bench/scheduling.py `Daemons`): prefetching workers and noisy run times,
in simulated time (no processes, no database)."""

import dataclasses

from bench import scheduling
from bench.scheduling import Daemons, uniform


def simulate(farm: scheduling.Farm, **options) -> scheduling.Result:
    """A replay's figures without its choice cost (wall time)."""
    return dataclasses.replace(scheduling.simulate(farm, **options), choice_ms=0.0)


def test_a_prefetching_worker_makes_a_new_task_wait_behind_its_running_and_its_prefetched_one():
    # identical workers, 2 s jobs: a trickle task waits for the running job to end (about 1.6 s at p50)
    plain = simulate(uniform(), smart=True)
    # a lead shorter than any job changes nothing: the worker asks as the running job ends
    assert simulate(uniform(), smart=True, daemons=Daemons(lead=0.5)) == plain
    # a lead longer than a job: each worker holds its next task all along, one more job ahead of the trickle
    eager = simulate(uniform(), smart=True, daemons=Daemons(lead=10.0))
    assert eager.trickle_p50 == plain.trickle_p50 + 2.0
    assert (eager.all_done, eager.busy_share) == (plain.all_done, 1.0)  # no GPU waits between its tasks


def test_run_time_noise_is_seeded():
    noisy = simulate(uniform(), smart=True, daemons=Daemons(jitter=0.1, seed=0))
    assert simulate(uniform(), smart=True, daemons=Daemons(jitter=0.1, seed=0)) == noisy
    assert simulate(uniform(), smart=True, daemons=Daemons(jitter=0.1, seed=1)).all_done != noisy.all_done
    assert noisy.all_done != simulate(uniform(), smart=True).all_done
