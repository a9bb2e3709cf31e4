"""`runworker --port`: the worker's own HTTP surface, in the real farm (one case: a task through it)."""

import signal
import socket

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from generation.models import TaskAttempt
from tests.e2e.helpers import all_finished, assert_completed_once, sha256_of, wait_until
from workers_app.daemon.activity import ACTIVE_STATES

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_runworker_with_a_port_serves_its_view_of_a_task_the_image_health_and_metrics(farm, tmp_path):
    simulator = farm.simulator()
    port, images = _free_port(), tmp_path / "worker-images"
    process = farm.worker_process(simulator, options=("--port", str(port), "--images-dir", str(images)))
    farm.wait_registered(process)
    url = f"http://127.0.0.1:{port}"
    task = farm.submit()
    wait_until(lambda: all_finished([task]), timeout=30, what="the task to finish")
    image = assert_completed_once(task, farm.media_root)
    prompt_id = TaskAttempt.objects.get(task=task).comfyui_prompt_id  # as the scheduler recorded it
    assert prompt_id

    # The scheduler marks the task completed before its answer reaches the daemon, which records the end when
    # it reads that answer: the daemon's view may lag the database by that round trip.
    own_status = f"{url}/status/{task.public_id}"
    wait_until(
        lambda: requests.get(own_status, timeout=5).json()["state"] not in ACTIVE_STATES,
        timeout=10,
        what="the worker to read its completion's answer",
    )
    for key in (str(task.public_id), prompt_id):
        status = requests.get(f"{url}/status/{key}", timeout=5).json()
        assert (status["task_id"], status["prompt_id"]) == (str(task.public_id), prompt_id)
        assert (status["state"], status["status"], status["progress"]) == ("completed", "completed", 100)
        assert (status["error"], len(status["images"])) == (None, 1)
    copy = wait_until(
        lambda: (r := requests.get(f"{url}/images/{status['images'][0]}", timeout=5)).ok and r,
        what="the local copy of the image",
    )
    assert copy.headers["Content-Type"] == "image/png"
    (tmp_path / "copy.png").write_bytes(copy.content)
    assert sha256_of(tmp_path / "copy.png") == image.sha256 == sha256_of(farm.media_root / image.file.name)

    health = requests.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 200, health.text
    body = health.json()
    assert (body["scheduler"], body["comfyui"], body["doing"]) == ({"reachable": True},) * 2 + ("idle",)
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    samples = {
        (s.name, s.labels.get("result")): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("t2i_worker_tasks_total", "completed")] == 1
    assert samples[("t2i_worker_upload_seconds_count", None)] == 1

    process.send(signal.SIGTERM)
    assert process.wait(20) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=2)
