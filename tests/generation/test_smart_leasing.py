"""The lease path with placement (T2I_SCHEDULER=smart, the default): warm models, earliest finish, fair
share, the wake of a worker another stood back for, the reasons recorded, and the FIFO setting."""

import asyncio

import pytest
from django.utils import timezone

from generation import dispatch, farm_snapshot, placement
from generation.models import TaskAttempt, UserShare
from tests.conftest import CHECKPOINT, capabilities, make_worker, submit_task
from tests.factories import UserFactory
from tests.generation.test_leasing import lease
from workers_app.models import Worker, WorkerSpeed
from workers_app.waiting import Waiter, pick

pytestmark = pytest.mark.django_db

OTHER = "other-sdxl.safetensors"
BOTH = capabilities(checkpoints=(CHECKPOINT, OTHER))


def workers(*warm: str) -> list[Worker]:
    made = []
    for i, checkpoint in enumerate(warm):
        worker, _ = make_worker(f"gpu-{i}", caps=BOTH)
        Worker.objects.filter(pk=worker.pk).update(warm_checkpoint=checkpoint)
        worker.warm_checkpoint = checkpoint
        made.append(worker)
    return made


@pytest.fixture
def woken(monkeypatch):
    """Events as PostgreSQL's NOTIFY would carry them to every process (here: recorded)."""
    events = []
    monkeypatch.setattr(dispatch, "publish", lambda kind, data=None: events.append((kind, data)))
    monkeypatch.setattr(dispatch, "notify_enabled", lambda: True)
    return events


def test_a_worker_gets_the_task_for_its_warm_model(woken):
    on_a, on_b = workers(CHECKPOINT, OTHER)
    for_b, for_a = submit_task(checkpoint=OTHER), submit_task(checkpoint=CHECKPOINT)
    got = lease(on_a)
    assert got.task.pk == for_a.pk  # the older task is for b, which gpu-1 has warm and is idle
    attempt = TaskAttempt.objects.get(task=for_a)
    assert attempt.placement == placement.WARM and not attempt.switched
    assert attempt.expected_seconds == pytest.approx(2.0 * 64 * 64 / (512 * 512))
    assert lease(on_b).task.pk == for_b.pk


def test_a_slow_worker_stands_back_for_a_fast_idle_one_and_wakes_it(woken):
    slow, fast = workers(CHECKPOINT, CHECKPOINT)
    unit = placement.work_units(64, 64, 20, 1)
    WorkerSpeed.objects.create(worker=slow, checkpoint=CHECKPOINT, seconds_per_unit=8.0 / unit)
    WorkerSpeed.objects.create(worker=fast, checkpoint=CHECKPOINT, seconds_per_unit=1.0 / unit)
    task = submit_task(checkpoint=CHECKPOINT)
    woken.clear()
    assert lease(slow) is None
    assert ("work", {"count": 1, "worker": fast.pk}) in woken
    got = lease(fast)
    assert got.task.pk == task.pk
    assert TaskAttempt.objects.get(task=task).placement == placement.FAIR  # the head of the line


def test_without_notify_a_worker_does_not_stand_back_for_an_idle_one_it_cannot_wake():
    slow, fast = workers(CHECKPOINT, CHECKPOINT)
    unit = placement.work_units(64, 64, 20, 1)
    WorkerSpeed.objects.create(worker=slow, checkpoint=CHECKPOINT, seconds_per_unit=8.0 / unit)
    WorkerSpeed.objects.create(worker=fast, checkpoint=CHECKPOINT, seconds_per_unit=1.0 / unit)
    task = submit_task(checkpoint=CHECKPOINT)
    assert lease(slow).task.pk == task.pk  # SQLite: an event would not reach fast's process


def test_a_slow_worker_takes_a_task_the_fast_one_would_only_finish_later():
    slow, fast = workers(CHECKPOINT, CHECKPOINT)
    unit = placement.work_units(64, 64, 20, 1)
    WorkerSpeed.objects.create(worker=slow, checkpoint=CHECKPOINT, seconds_per_unit=3.0 / unit)
    WorkerSpeed.objects.create(worker=fast, checkpoint=CHECKPOINT, seconds_per_unit=1.0 / unit)
    first, _second, third = (submit_task(checkpoint=CHECKPOINT) for _ in range(3))
    assert lease(fast).task.pk == first.pk  # now fast frees in 1 s, then 2 s, then 3 s
    assert lease(slow).task.pk == third.pk  # fast takes the second (done at 2 s); slow's 3 s beat its 3+


def test_fair_share_puts_a_light_users_single_task_before_a_flood():
    (worker,) = workers(CHECKPOINT)
    flood_user, light_user = UserFactory(), UserFactory()
    UserShare.objects.create(user=flood_user, usage_seconds=500.0)
    flood = [submit_task(owner=flood_user, checkpoint=CHECKPOINT) for _ in range(60)]  # beyond the window
    single = submit_task(owner=light_user, checkpoint=CHECKPOINT)
    got = lease(worker)
    assert got.task.pk == single.pk and got.task.pk != flood[0].pk
    assert TaskAttempt.objects.get(task=single).placement == placement.FAIR


def test_a_users_first_task_is_in_the_next_leases_window_though_the_queues_users_are_cached(
    django_capture_on_commit_callbacks,
):
    first, second = workers(CHECKPOINT, CHECKPOINT)
    flood_user, light_user = UserFactory(), UserFactory()
    UserShare.objects.create(user=flood_user, usage_seconds=500.0)
    for _ in range(60):  # beyond the window: the light user's task is seen only as a user the head lacks
        submit_task(owner=flood_user, checkpoint=CHECKPOINT)
    assert lease(first).task.owner_id == flood_user.pk  # reads (and caches) the users with queued work
    with django_capture_on_commit_callbacks(execute=True):  # the `work` event names the owner
        single = submit_task(owner=light_user, checkpoint=CHECKPOINT)
    assert lease(second).task.pk == single.pk


def test_a_leases_farm_holds_the_asker_and_its_competitors_and_counts_everyones_held_work(monkeypatch):
    monkeypatch.setattr(placement, "NEIGHBOURS", 3)
    pool = workers(*([CHECKPOINT] * 6))
    owner = UserFactory()
    for _ in range(4):
        submit_task(owner=owner, checkpoint=CHECKPOINT)
    for busy in pool[:4]:
        assert lease(busy) is not None
    now = timezone.now()
    live = farm_snapshot.live_workers(now)
    everyone = farm_snapshot.snapshot(now=now, workers=live)
    farm = farm_snapshot.snapshot(now=now, workers=live, asker=pool[0].pk)
    busy, idle = {w.pk for w in pool[:4]}, {pool[4].pk, pool[5].pk}
    # the asker, the two idle workers (free now, so sooner than any busy one) and one more
    assert len(farm.nodes) == 4 and {pool[0].pk, *idle} < set(farm.nodes) < busy | idle
    assert farm.nodes[pool[0].pk] == everyone.nodes[pool[0].pk]
    assert farm.usage == everyone.usage and farm.usage[owner.pk] > 0  # every worker's held work counts
    assert farm.live == 6 and farm.job_seconds == everyone.job_seconds
    busy_only = farm_snapshot.snapshot(now=now, workers=live, asker=pool[4].pk, defer_to_idle=False)
    assert len(busy_only.nodes) == 4 and set(busy_only.nodes) - {pool[4].pk} < busy  # 3 of the 4 busy ones


def test_a_busy_workers_warm_model_comes_with_its_held_work_not_from_the_cached_live_list():
    (worker,) = workers(OTHER)  # its row: it just finished a task on OTHER (its switch) and runs another
    task = submit_task(checkpoint=OTHER)
    assert lease(worker).task.pk == task.pk
    # the live workers as a process cached them a moment ago, before that completion
    cached = farm_snapshot.LiveWorker(worker.pk, worker.registered_at, CHECKPOINT, worker.inventory_at)
    now = timezone.now()
    farm = farm_snapshot.snapshot(now=now, workers=[cached])
    node = farm.nodes[worker.pk]
    run = placement.DEFAULT_SECONDS_PER_UNIT * placement.work_units(64, 64, task.steps, task.batch_size)
    assert node.free_at - now.timestamp() == pytest.approx(run)  # no switch: OTHER is loaded already
    assert node.warm == OTHER


def test_fifo_setting_keeps_the_old_rule(settings):
    settings.T2I = {**settings.T2I, "SCHEDULER": "fifo"}
    on_a, _ = workers(CHECKPOINT, OTHER)
    for_b = submit_task(checkpoint=OTHER)
    submit_task(checkpoint=CHECKPOINT)
    assert lease(on_a).task.pk == for_b.pk
    attempt = TaskAttempt.objects.get(task=for_b)
    assert attempt.placement == placement.FIFO and attempt.switched


def test_a_smart_lease_is_a_bounded_number_of_queries(django_assert_max_num_queries):
    pool = workers(*([CHECKPOINT] * 6))
    for _ in range(10):
        submit_task(checkpoint=CHECKPOINT, owner=UserFactory())
    lease(pool[0])
    with django_assert_max_num_queries(14):
        assert lease(pool[1]) is not None


def test_a_wake_goes_to_the_named_worker_else_to_one_with_the_checkpoint_warm():
    loop = asyncio.new_event_loop()
    try:
        cold = Waiter(1, frozenset(), loop, warm="")
        warm = Waiter(2, frozenset(), loop, warm=OTHER)
        named = Waiter(3, frozenset(), loop, warm="")
        room = [cold, warm, named]
        assert pick(room, {"wake_id": 1, "worker": 3}) is named
        assert pick(room, {"wake_id": 1, "worker": 9}) is None  # not waiting here: another process's
        assert pick(room, {"wake_id": 1, "checkpoint": OTHER}) is warm
        assert pick(room, {"wake_id": 1, "checkpoint": CHECKPOINT}) is cold  # nobody warm: the longest wait
        assert pick(room, {"wake_id": 1}) is cold
    finally:
        loop.close()
