"""Placement rules as plain functions (generation.placement): no database."""

import random

import pytest

from generation import placement
from generation.placement import Job, Node, order_jobs, plan

UNIT = placement.work_units(512, 512, 20, 1)  # 2 s on a speed x1 worker
SPU = placement.DEFAULT_SECONDS_PER_UNIT


def job(id, ckpt="a", user=1, priority=0, at=0.0, work=UNIT):
    return Job(id=id, user=user, checkpoint=ckpt, priority=priority, work=work, queued_at=at)


def node(id, warm="a", free_at=0.0, speed=1.0, switch=4.0, ckpts=()):
    return Node(
        id=id,
        checkpoints=frozenset(ckpts),
        warm=warm,
        free_at=free_at,
        default_seconds_per_unit=SPU / speed,
        switch_seconds=switch,
    )


@pytest.mark.parametrize(
    ("asker", "others", "jobs", "expected", "reason"),
    [
        # warm model wins: the head job is for b, another worker has b warm and frees soon
        (node(1, warm="a"), [node(2, warm="b", free_at=1)], [job(1, "b"), job(2, "a")], 2, placement.WARM),
        # ...but with nobody else to take b soon, the asker switches rather than idle
        (node(1, warm="a"), [node(2, warm="b", free_at=30)], [job(1, "b"), job(2, "a")], 1, placement.FAIR),
        # same-checkpoint tasks stay together: two b workers soak up b jobs, the a worker takes the a job
        (
            node(1, warm="a"),
            [node(2, warm="b"), node(3, warm="b")],
            [job(1, "b"), job(2, "b"), job(3, "a")],
            3,
            placement.WARM,
        ),
        # a slow worker does not take the last job when a fast one frees sooner and finishes first
        (node(1, speed=0.5), [node(2, speed=2, free_at=1)], [job(1)], None, ""),
        # ...but it does when the fast one frees too late
        (node(1, speed=0.5), [node(2, speed=2, free_at=10)], [job(1)], 1, placement.FAIR),
        # ...and when the fast one has a queue of its own, the slow one takes the later of two
        (
            node(1, speed=0.5),
            [node(2, speed=2, free_at=1)],
            [job(1), job(2), job(3, "b")],
            3,
            placement.FASTEST,
        ),
        # a checkpoint the asker does not hold is skipped
        (node(1, ckpts=("a",)), [], [job(1, "b"), job(2, "a")], 2, placement.WARM),
        # nobody else can run it: the asker takes it
        (node(1, speed=0.1), [node(2, ckpts=("a",), free_at=0)], [job(1, "b")], 1, placement.FAIR),
    ],
)
def test_plan_picks_the_earliest_finish(asker, others, jobs, expected, reason):
    choice = plan(asker, [asker, *others], jobs, now=0.0)
    assert (choice.job_ids[0] if choice.job_ids else None) == expected
    assert choice.reason == reason


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        # strict between levels, whatever the age or the user
        ([job(1, priority=0, at=0), job(2, priority=5, at=9)], [2, 1]),
        ([job(1, priority=-1, at=0, user=2), job(2, priority=0, at=9), job(3, priority=0, at=10)], [2, 3, 1]),
        ([job(1, priority=0, at=0, user=2), job(2, priority=1, at=9)], [2, 1]),
        # within a level users take turns (equal usage: the older head first)
        (
            [job(1, user=1, at=0), job(2, user=1, at=1), job(3, user=1, at=2), job(4, user=2, at=3)],
            [1, 4, 2, 3],
        ),
    ],
)
def test_order_is_strict_between_levels_and_fair_within(jobs, expected):
    served = {1: 10.0, 2: 10.0}  # both have work running: no aging credit, plain fair queuing
    assert [j.id for j in order_jobs(jobs, now=10.0, served_at=served)] == expected


def test_fair_share_puts_a_light_user_first_and_weights_count():
    flood = [job(i, user=1, at=i * 0.01) for i in range(1, 1001)]
    single = job(5000, user=2, at=50.0)
    running = {1: 55.0}  # the flood user has tasks running: served now
    ordered = order_jobs([*flood, single], now=55.0, usage={1: 100.0, 2: 0.0}, served_at=running)
    assert ordered[0].id == 5000  # no job ahead of it
    # equal usage: the single job waits at most about one job of the flood user
    ordered = order_jobs([*flood, single], now=55.0, usage={1: 0.0, 2: 0.0}, served_at=running)
    assert [j.id for j in ordered].index(5000) <= 1
    # weight 3 for user 1: it gets three turns per turn of user 2
    two = [job(i, user=2, at=1.0) for i in range(100, 110)]
    ordered = order_jobs([*flood[:9], *two], now=1.0, weights={1: 3.0}, served_at={1: 1.0, 2: 1.0})
    assert [j.user for j in ordered[:8]] == [1, 2, 1, 1, 1, 2, 1, 1]


def test_aging_bounds_the_wait_of_a_user_who_used_much_lately():
    heavy = job(1, user=3, at=0.0)  # its user ran 100 GPU-seconds lately, then waited unserved

    def newcomer_at(now):  # a stream of light users, each with one fresh task
        return job(2, user=int(now) + 10, at=now)

    usage = {3: 100.0}
    assert order_jobs([heavy, newcomer_at(10.0)], now=10.0, usage=usage, served_at={3: 0.0})[0].id == 2
    assert order_jobs([heavy, newcomer_at(25.0)], now=25.0, usage=usage, served_at={3: 0.0})[0].id == 1
    # without aging it would wait until its usage decays below theirs
    assert order_jobs([heavy, newcomer_at(25.0)], now=25.0, usage=usage, aging=0.0)[0].id == 2


def test_finish_estimates_count_held_work_and_switches():
    nodes = [node(1, warm="a", free_at=3.0), node(2, warm="b", free_at=0.0)]
    done = placement.finish_estimates(nodes, [job(1, "a"), job(2, "a"), job(3, "b")], now=0.0)
    # job 1: node 1 at 3+2=5, node 2 at 0+4+2=6 -> 5; job 2: node 1 at 7, node 2 at 6 -> 6 (switch);
    # job 3 (b): node 1 at 5+4+2=11, node 2 (now warm on a) at 6+4+2=12 -> 11
    assert done == {1: 5.0, 2: 6.0, 3: 11.0}


def test_the_competitors_are_the_workers_that_free_soonest(monkeypatch):
    monkeypatch.setattr(placement, "NEIGHBOURS", 2)
    free_at = {1: 0.0, 2: 5.0, 3: 0.0, 4: 1.0, 5: 9.0}  # now = 0: workers 1 and 3 are idle
    assert placement.competitors(1, free_at, now=0.0) == [3, 4]  # the asker is not one; equals in order
    assert placement.competitors(1, free_at, now=0.0, defer_to_idle=False) == [4, 2]
    # plan lets only them take jobs from the asker: worker 5, free last but fast and warm, would finish this
    # b job first (3.2 s; the others 24-26 s)
    slow = [node(1, speed=0.1), node(3, speed=0.1, free_at=1.0), node(4, speed=0.1, free_at=2.0)]
    nodes = [*slow, node(5, warm="b", speed=10, free_at=3.0)]
    assert plan(nodes[0], nodes, [job(1, "b")], now=0.0).planned == {1: 1}
    monkeypatch.setattr(placement, "NEIGHBOURS", 3)
    assert plan(nodes[0], nodes, [job(1, "b")], now=0.0).planned == {1: 5}


def test_finish_estimates_place_the_head_as_the_lease_path_does():
    nodes = [node(1, warm="a"), node(2, warm="b")]
    jobs = [job(1, "a"), job(2, "a"), job(3, "a"), job(4, "b")]
    # Node 2 asks at 0 and `plan` gives it the first job it finishes no later than anyone: job 3 (a switch,
    # done at 6, as node 1 would); node 1 runs jobs 1 and 2, then job 4 with a switch: 4+4+2 = 10.
    assert placement.finish_estimates(nodes, jobs, now=0.0) == {1: 2.0, 2: 4.0, 3: 6.0, 4: 10.0}
    # An ideal list schedule (each job in turn to whoever finishes it first) would say 2 for job 4: what
    # the estimate falls back to beyond its budget
    assert placement.finish_estimates(nodes, jobs, now=0.0, budget=0)[4] == 2.0


def test_finish_estimates_give_a_worker_what_its_own_window_holds():
    # gpu 1 runs only b; 50 a jobs for the fast gpu 2 come first, but gpu 1's lease sees only b jobs
    nodes = [node(1, warm="b", ckpts=("b",)), node(2, warm="a", speed=2)]
    jobs = [job(i, "a") for i in range(1, 51)] + [job(51, "b")]
    done = placement.finish_estimates(nodes, jobs, now=0.0)
    assert done[51] == 2.0 and done[50] == 50.0


def test_the_lease_path_played_forward_places_every_job_some_worker_can_run():
    rng = random.Random(1)
    for _ in range(500):
        nodes = [
            node(i, warm=rng.choice("ab"), free_at=rng.choice([0.0, 0.0, 1.0, 3.0]),
                 speed=rng.choice([0.25, 1, 2, 4]), ckpts=rng.sample("ab", rng.randint(1, 2)))
            for i in range(1, rng.randint(2, 3) + 1)
        ]  # fmt: skip
        jobs = [job(i, rng.choice("ab")) for i in range(1, rng.randint(2, 8) + 1)]
        done, _free, _warm, rest = placement.simulate_leases(nodes, jobs, now=0.0)
        # a worker that stands back asks again at the next event, until every worker has stood back
        # with nothing placed meanwhile
        assert set(done) == {j.id for j in jobs if any(n.can_run(j) for n in nodes)} and not rest


def test_finish_estimates_leave_out_jobs_nobody_can_run():
    nodes = [node(1, ckpts=("a",)), node(2, ckpts=("a",), free_at=1.0)]
    done = placement.finish_estimates(nodes, [job(1, "b"), job(2, "a"), job(3, "a"), job(4, "b")], now=0.0)
    assert done == {2: 2.0, 3: 3.0}


def test_an_unknown_loaded_model_costs_the_learned_switch_else_nothing():
    fresh, warm = node(1, warm=""), node(2, warm="a", free_at=0.1)
    assert plan(fresh, [fresh, warm], [job(1)], now=0.0).job_ids == [1]  # nothing learned: no penalty
    fresh.cold_seconds = 4.0  # the farm learned that a load costs 4 s
    assert plan(fresh, [fresh, warm], [job(1)], now=0.0).job_ids == []


def test_other_users_arrivals_stretch_the_wait_of_whoever_used_more():
    nodes = [node(1), node(2)]  # 2 DEFAULT jobs per 2 s: UNIT per second
    window = placement.ARRIVAL_WINDOW
    arrived = {2: UNIT * window / 4}  # user 2 submits a quarter of the farm's capacity, and used less
    ahead = placement.arrival_shares(arrived, nodes, usage={1: 100.0, 2: 1.0})
    assert ahead == {1: pytest.approx(0.25)}  # user 2's own arrivals do not go ahead of user 2
    jobs = [job(1, user=1), job(2, user=1), job(3, user=1), job(4, user=2)]
    plain = placement.finish_estimates(nodes, jobs, now=10.0)
    stretched = placement.finish_estimates(nodes, jobs, now=10.0, ahead=ahead)
    assert stretched[3] == pytest.approx(10.0 + (plain[3] - 10.0) / 0.75)
    assert stretched[4] == plain[4]
    # however much others submit, max-min fairness leaves each of the 2 users half of the farm
    flood = placement.arrival_shares({2: 100 * UNIT * window}, nodes, usage={1: 100.0, 2: 1.0})
    assert flood == {1: pytest.approx(0.5)}


def test_a_whole_workflow_runs_where_its_requirement_key_is_runnable():
    workflow = Job(id=1, user=1, checkpoint="", priority=0, work=1.0, queued_at=0.0, template=None,
                   requirements="k1")  # fmt: skip
    templated = Job(id=2, user=1, checkpoint="", priority=0, work=1.0, queued_at=0.0, template=7)
    has_it = Node(id=1, templates=frozenset({7}), workflows=frozenset({"k1"}))
    lacks_it = Node(id=2, templates=frozenset({7}), workflows=frozenset())
    assert has_it.can_run(workflow) and not lacks_it.can_run(workflow)
    assert lacks_it.can_run(templated)
    assert Node(id=3, templates=frozenset({7})).can_run(workflow)  # workflows unknown: any
    assert plan(lacks_it, [lacks_it, has_it], [workflow], now=0.0).job_ids == []
    assert plan(has_it, [lacks_it, has_it], [workflow], now=0.0).job_ids == [1]
