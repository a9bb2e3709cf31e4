"""The worker's own HTTP surface: its record of recent tasks, the routes on an ephemeral loopback port, the
token beyond loopback, and the daemon that fills it (run_task, WorkerLoop with --port)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.fakes import FakeComfy, FakeScheduler, make_lease, png_bytes, wait_until
from tests.daemon.test_worker import make_worker, running
from workers_app.daemon.activity import WorkerActivity
from workers_app.daemon.comfyui import ComfyUIError
from workers_app.daemon.image_cache import ImageCache
from workers_app.daemon.runner import RunnerSettings, TaskResult, run_task
from workers_app.daemon.surface import Health, SurfaceConfig, WorkerSurface, needs_token, token_matches

TOKEN = "worker-token-secret"


# -- the record of recent tasks -------------------------------------------------------------------------
def test_the_record_follows_a_task_and_is_found_by_task_or_prompt_id():
    activity = WorkerActivity()
    activity.leased("t1", attempt=2)
    activity.queued("t1", "p1")
    assert activity.doing() == "1 more task(s) queued"
    activity.started("t1")
    activity.progress("t1", 5, 20)
    assert activity.doing() == "running task t1 at 25%"
    activity.images_fetched("t1", [("a.png", b"1"), ("b.png", b"2")], round_trip=1.5)
    activity.finished("t1", "completed")
    by_task, by_prompt = activity.find("t1"), activity.find("p1")
    assert by_task == by_prompt
    assert (by_task.state, by_task.attempt, by_task.progress, by_task.images) == (
        "completed", 2, 1.0, ["a.png", "b.png"],
    )  # fmt: skip
    assert by_task.started_at and by_task.finished_at and by_task.finished_at >= by_task.started_at
    assert activity.find("nope") is None
    assert activity.doing() == "idle"


def test_the_record_keeps_the_running_tasks_and_the_latest_finished_ones():
    activity = WorkerActivity(keep=3)
    activity.leased("running", 1)
    for n in range(10):
        activity.leased(f"t{n}", 1)
        activity.failed(f"t{n}", "execution_error", "boom\n  twice")
        activity.finished(f"t{n}", "failed")
    assert activity.find("running") is not None
    assert [n for n in range(10) if activity.find(f"t{n}")] == [7, 8, 9]
    assert (activity.find("t9").error_code, activity.find("t9").error) == ("execution_error", "boom twice")


def test_a_copy_is_returned_not_the_live_record():
    activity = WorkerActivity()
    activity.leased("t1", 1)
    activity.find("t1").images.append("forged.png")
    assert activity.find("t1").images == []


# -- the token ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "listen,needed",
    [
        ("127.0.0.1", False), ("127.0.0.2", False), ("::1", False), ("[::1]", False), ("localhost", False),
        ("0.0.0.0", True), ("::", True), ("192.168.1.20", True), ("gpu-01.lan", True),
    ],
)  # fmt: skip
def test_a_token_is_needed_beyond_loopback(listen, needed):
    assert needs_token(listen) is needed


@pytest.mark.parametrize(
    "header,ok",
    [
        (f"Bearer {TOKEN}", True), (None, False), ("", False), (TOKEN, False), (f"Bearer {TOKEN}x", False),
        (f"bearer {TOKEN}", False), ("Bearer wrong", False), ("Bearer é", False),
    ],
)  # fmt: skip
def test_token_matches_only_the_exact_bearer_header(header, ok):
    assert token_matches(header, TOKEN) is ok


# -- the routes, on an ephemeral loopback port ----------------------------------------------------------
@contextmanager
def serving(
    tmp_path, *, health: Health | None = None, require_token: bool = False
) -> Iterator[WorkerSurface]:
    cache = ImageCache(tmp_path / "images")
    cache.open()
    activity = WorkerActivity(cache=cache)
    health = health or Health(None, None, "working", "idle")
    surface = WorkerSurface(
        SurfaceConfig(port=0, images_dir=str(cache.folder)),
        token=TOKEN,
        activity=activity,
        health=lambda: health,
        cache=cache,
        name="gpu-01",
    )
    surface.require_token = require_token  # as when bound beyond loopback (needs_token), without doing it
    surface.start()
    try:
        yield surface
    finally:
        surface.stop()
        cache.close()


def get(surface: WorkerSurface, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{surface.url}{path}", timeout=5, **kwargs)


def test_status_answers_for_task_and_prompt_id_and_404_json_otherwise(tmp_path):
    with serving(tmp_path) as surface:
        surface.activity.leased("task-1", 1)
        surface.activity.queued("task-1", "prompt-1")
        for key in ("task-1", "prompt-1"):
            response = get(surface, f"/status/{key}")
            assert response.status_code == HTTPStatus.OK
            assert response.headers["Content-Type"] == "application/json"
            body = response.json()
            assert (body["task_id"], body["prompt_id"], body["state"]) == ("task-1", "prompt-1", "queued")
            assert (body["status"], body["progress"]) == ("pending", 0)  # the original design's words
            assert set(body) >= {"leased_at", "started_at", "finished_at", "images", "error_code", "error"}
        surface.activity.started("task-1")
        surface.activity.progress("task-1", 3, 12)
        body = get(surface, "/status/prompt-1").json()
        assert (body["state"], body["status"], body["progress"]) == ("running", "running", 25)
        missing = get(surface, "/status/other")
        assert missing.status_code == HTTPStatus.NOT_FOUND
        assert missing.json()["error"] == "not_found"


def test_images_are_served_with_their_type_and_paths_are_refused(tmp_path):
    with serving(tmp_path) as surface:
        png = png_bytes()
        surface.cache.write("t2i_a1_00001_.png", png)
        surface.cache.write("photo.jpg", b"\xff\xd8jpeg")
        (tmp_path / "secret.txt").write_text("not yours")
        response = get(surface, "/images/t2i_a1_00001_.png")
        assert response.status_code == HTTPStatus.OK
        assert (response.headers["Content-Type"], response.content) == ("image/png", png)
        assert get(surface, "/images/photo.jpg").headers["Content-Type"] == "image/jpeg"
        for bad in ("..%2Fsecret.txt", "%2E%2E", ".t2i-image-cache", "a%2Fb.png", "%2Fetc%2Fpasswd"):
            answer = get(surface, f"/images/{bad}")
            assert answer.status_code == HTTPStatus.BAD_REQUEST, bad
            assert answer.json()["fields"] == {"filename": [answer.json()["detail"]]}
        # A client that sends ../ unnormalised gets the same refusal.
        with socket.create_connection(("127.0.0.1", surface.port), timeout=5) as sock:
            sock.sendall(b"GET /images/../secret.txt HTTP/1.0\r\n\r\n")
            raw = b"".join(iter(lambda: sock.recv(4096), b""))
        assert raw.startswith(b"HTTP/1.0 400") and b"not yours" not in raw
        missing = get(surface, "/images/gone.png")
        assert missing.status_code == HTTPStatus.NOT_FOUND
        assert missing.json()["error"] == "not_found"


def test_healthz_is_200_when_both_answer_and_503_naming_the_one_that_does_not(tmp_path):
    with serving(tmp_path) as surface:
        surface.activity.leased("task-1", 1)
        response = get(surface, "/healthz")
        assert response.status_code == HTTPStatus.OK
        body = response.json()
        assert (body["status"], body["worker"], body["scheduler"], body["comfyui"]) == (
            "ok", "gpu-01", {"reachable": True}, {"reachable": True},
        )  # fmt: skip
        assert body["tasks"] == [{"task_id": "task-1", "prompt_id": None, "state": "leased", "progress": 0.0}]
    down = Health(None, "ComfyUI at http://x is unreachable (ConnectionError)", "working", "idle")
    with serving(tmp_path, health=down) as surface:
        response = get(surface, "/healthz")
        assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
        body = response.json()
        assert body["status"] == "unhealthy"
        assert body["comfyui"] == {"reachable": False, "detail": down.comfyui_error}
        assert body["scheduler"] == {"reachable": True}


def test_metrics_are_prometheus_text_from_this_daemon_only(tmp_path):
    with serving(tmp_path) as surface, serving(tmp_path / "other") as other:
        surface.activity.leased("t1", 1)
        surface.activity.images_fetched("t1", [("a.png", b"1")], round_trip=3.0)
        surface.activity.uploaded(0.2)
        surface.activity.finished("t1", "completed")
        surface.activity.leased("t2", 1)
        surface.activity.finished("t2", "failed")
        response = get(surface, "/metrics")
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }
        assert samples[("t2i_worker_tasks_total", (("result", "completed"),))] == 1
        assert samples[("t2i_worker_tasks_total", (("result", "failed"),))] == 1
        assert samples[("t2i_worker_tasks_total", (("result", "lost"),))] == 0
        assert samples[("t2i_worker_comfyui_round_trip_seconds_sum", ())] == 3.0
        assert samples[("t2i_worker_upload_seconds_count", ())] == 1
        assert samples[("t2i_worker_tasks_in_hand", ())] == 0
        assert 'completed"} 0.0' in get(other, "/metrics").text  # its own registry, not the global one


def test_beyond_loopback_every_route_needs_the_token(tmp_path, caplog):
    debug = caplog.at_level(logging.DEBUG, logger="workers_app.daemon")
    with debug, serving(tmp_path, require_token=True) as surface:
        surface.cache.write("a.png", png_bytes())
        for path in ("/status/x", "/images/a.png", "/healthz", "/metrics"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                refused = get(surface, path, headers=headers)
                assert refused.status_code == HTTPStatus.UNAUTHORIZED, (path, headers)
                assert refused.json()["error"] == "not_authenticated"
                assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            allowed = get(surface, path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert allowed.status_code != HTTPStatus.UNAUTHORIZED, path
    assert "surface" in caplog.text  # the requests were logged (DEBUG), the token was not
    assert TOKEN not in caplog.text


def test_unknown_routes_and_other_methods_answer_json(tmp_path):
    with serving(tmp_path) as surface:
        assert get(surface, "/nothing").json()["error"] == "not_found"
        posted = requests.post(f"{surface.url}/status/x", timeout=5)
        assert posted.status_code == HTTPStatus.METHOD_NOT_ALLOWED
        assert posted.json()["error"] == "method_not_allowed"
        head = requests.head(f"{surface.url}/healthz", timeout=5)
        assert head.status_code == HTTPStatus.METHOD_NOT_ALLOWED


# -- the daemon fills it --------------------------------------------------------------------------------
class BrokenCache:
    def store_later(self, images):
        raise OSError("disk full")


def test_run_task_records_the_task_and_a_broken_cache_does_not_touch_the_completion(caplog):
    comfy, sched = FakeComfy(progress=((10, 20),)), FakeScheduler()
    activity = WorkerActivity(cache=BrokenCache())
    lease = make_lease(1)
    settings = RunnerSettings(sleep=lambda s: None, progress_interval=0.0)
    result = run_task(lease, comfy=comfy, scheduler=sched, settings=settings, activity=activity)
    assert result is TaskResult.COMPLETED
    assert sched.names().count("complete") == 1
    record = activity.find(lease.task_id)
    assert (record.state, record.prompt_id, record.images, record.progress) == (
        "completed",
        "p1",
        ["p1.png"],
        1,
    )
    assert activity.find("p1") == record
    assert "could not queue the local image copies" in caplog.text


def test_run_task_records_a_failure_with_its_code():
    comfy, sched = FakeComfy(), FakeScheduler()
    comfy.submit_errors.append(ComfyUIError("bad graph", retryable=False, code="workflow_invalid"))
    activity = WorkerActivity()
    lease = make_lease(2)
    run_task(
        lease, comfy=comfy, scheduler=sched, settings=RunnerSettings(sleep=lambda s: None), activity=activity
    )
    record = activity.find(lease.task_id)
    assert (record.state, record.error_code, record.error) == ("failed", "workflow_invalid", "bad graph")


def test_a_worker_with_a_port_serves_what_it_ran_and_stops_serving_with_the_daemon(tmp_path):
    comfy, sched = FakeComfy(), FakeScheduler([make_lease(1)])
    surface_config = SurfaceConfig(port=0, images_dir=str(tmp_path / "images"))
    worker = make_worker(comfy, sched, surface=surface_config)
    with running(worker):
        assert wait_until(lambda: "complete" in sched.names())
        surface = worker.surface
        status = get(surface, f"/status/{make_lease(1).task_id}").json()
        assert (status["state"], status["images"]) == ("completed", ["p1.png"])
        assert wait_until(lambda: get(surface, "/images/p1.png").status_code == HTTPStatus.OK)
        assert get(surface, "/images/p1.png").content == png_bytes()
        health = get(surface, "/healthz")
        assert (health.status_code, health.json()["phase"], health.json()["doing"]) == (
            200,
            "working",
            "idle",
        )
        sched.probe_error = "unreachable (ConnectionError)"
        surface._health_last = None  # skip the cache of the last answer
        health = get(surface, "/healthz")
        assert health.status_code == HTTPStatus.SERVICE_UNAVAILABLE
        assert health.json()["scheduler"] == {"reachable": False, "detail": "unreachable (ConnectionError)"}
        url = surface.url
    assert worker.surface is None
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=2)


def test_a_taken_port_stops_the_worker_before_it_registers(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sched = FakeScheduler()
        worker = make_worker(FakeComfy(), sched, surface=SurfaceConfig(port=port, images_dir=str(tmp_path)))
        assert worker.run() == 1
    assert f"cannot listen on 127.0.0.1:{port}" in worker.fatal_error
    assert "register" not in sched.names()


def test_a_folder_that_is_not_a_cache_stops_the_worker(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    worker = make_worker(
        FakeComfy(), FakeScheduler(), surface=SurfaceConfig(port=0, images_dir=str(tmp_path))
    )
    assert worker.run() == 1
    assert worker.fatal_error.startswith("--images-dir:")
    assert (tmp_path / "mine.txt").read_text() == "keep me"
