"""The daemon's side of the whole /object_info: the digest in its capabilities, the body sent only when the
scheduler asks for it (and again after a failure), gzip-compressed."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from tests.daemon.fakes import FakeComfy, FakeComfyUIServer, FakeScheduler, FakeSchedulerServer, wait_until
from tests.daemon.test_inventory import Clock
from tests.daemon.test_worker import make_worker, running
from workers_app.daemon.comfyui import ComfyUIClient, object_info_spec
from workers_app.daemon.inventory import InventoryWatch
from workers_app.daemon.scheduler import SchedulerClient, SchedulerUnavailable

SPEC = b'{"SaveImage":{"output_node":true}}'
DIGEST = hashlib.sha256(SPEC).hexdigest()


def test_capabilities_name_the_spec_and_keep_its_body():
    server = FakeComfyUIServer().start()
    comfy = ComfyUIClient(server.url, client_id="t")
    try:
        caps = comfy.capabilities()
        body = comfy.object_info_body(caps["object_info_sha256"])
        assert hashlib.sha256(body).hexdigest() == caps["object_info_sha256"]
        assert json.loads(body) == server.object_info  # the whole of it, in ComfyUI's order
        assert list(json.loads(body)) == list(server.object_info)
        assert comfy.object_info_body("0" * 64) is None
    finally:
        comfy.close()
        server.stop()


def test_upload_lists_are_emptied_so_inputs_do_not_change_the_spec():
    info = {
        "LoadImage": {"input": {"required": {"image": [["t2i_inputs/a.png"], {"image_upload": True}]}}},
        "LoadVideo": {
            "input": {"required": {"file": ["COMBO", {"options": ["v.mp4"], "video_upload": True}]}}
        },
        "KSampler": {"input": {"required": {"sampler_name": [["euler", "heun"], {}]}}},
    }
    spec = json.loads(object_info_spec(info))
    assert spec["LoadImage"]["input"]["required"]["image"] == [[], {"image_upload": True}]
    assert spec["LoadVideo"]["input"]["required"]["file"] == ["COMBO", {"options": [], "video_upload": True}]
    assert spec["KSampler"] == info["KSampler"]
    info["LoadImage"]["input"]["required"]["image"][0].append("t2i_inputs/b.png")
    assert json.loads(object_info_spec(info)) == spec


def test_the_scheduler_client_sends_the_body_gzip_compressed():
    server = FakeSchedulerServer().start()
    client = SchedulerClient(server.url, "token", timeout=2)
    try:
        server.answers[f"object_info/{DIGEST}"] = [(200, {"sha256": DIGEST, "stored": True})]
        assert client.object_info(DIGEST, SPEC) is True
        (sent,) = server.requests
        assert sent["path"] == f"object_info/{DIGEST}" and sent["headers"]["Content-Encoding"] == "gzip"
        assert gzip.decompress(sent["raw"]) == SPEC
        server.answers["inventory"] = [(200, {"changed": False, "object_info": "send"})]
        reply = client.inventory({"object_info_sha256": DIGEST})
        assert (reply.changed, reply.object_info) == (False, "send")
        server.answers["register"] = [(200, {"worker_id": 1, "name": "w"})]  # a scheduler older than this
        assert client.register(name="w", prefetch=1, capabilities={}).object_info is None
    finally:
        client.close()
        server.stop()


def test_register_answered_send_sends_the_body_once():
    comfy, sched = FakeComfy(), FakeScheduler()
    comfy.spec = SPEC
    worker = make_worker(comfy, sched, inventory_interval=0)
    with running(worker):
        assert wait_until(lambda: sched.calls_of("object_info"))
        assert wait_until(lambda: len(sched.calls_of("lease")) > 2)
    (sent,) = sched.calls_of("object_info")
    assert (sent["sha256"], sent["body"]) == (DIGEST, SPEC)
    assert sched.calls_of("register")[0]["capabilities"]["object_info_sha256"] == DIGEST


def test_a_scheduler_that_has_it_gets_no_body():
    comfy, sched = FakeComfy(), FakeScheduler()
    comfy.spec = SPEC
    sched.specs_stored[DIGEST] = SPEC
    watch = InventoryWatch(comfy, sched, interval=300, clock=Clock())
    watch.registered(comfy.capabilities(), object_info="have")
    assert sched.calls_of("object_info") == []


def test_a_changed_spec_is_sent_after_the_inventory_and_a_failed_send_is_retried():
    comfy, sched, clock = FakeComfy(), FakeScheduler(), Clock()
    comfy.spec = SPEC
    sched.specs_stored[DIGEST] = SPEC
    watch = InventoryWatch(comfy, sched, interval=300, clock=clock)
    watch.registered(comfy.capabilities(), object_info="have")
    comfy.spec = b'{"SaveImage":{"output_node":true},"New":{}}'
    new = hashlib.sha256(comfy.spec).hexdigest()
    sched.errors["object_info"] = [SchedulerUnavailable("502")]
    clock.now = 300
    assert watch.due() and watch.refresh() is True
    assert [c["sha256"] for c in sched.calls_of("object_info")] == [new]  # failed
    clock.now = 320
    assert not watch.due()
    clock.now = 330  # RETRY_AFTER: asks again, though nothing changed, and sends it
    assert watch.due() and watch.refresh() is True
    assert [c["sha256"] for c in sched.calls_of("object_info")] == [new, new]
    assert sched.specs_stored[new] == comfy.spec
    clock.now = 400
    assert not watch.due()


@pytest.mark.parametrize("answer", ["have", None])
def test_nothing_is_owed_when_not_asked(answer):
    comfy, sched, clock = FakeComfy(), FakeScheduler(), Clock()
    comfy.spec = SPEC
    watch = InventoryWatch(comfy, sched, interval=300, clock=clock)
    watch.registered(comfy.capabilities(), object_info=answer)
    clock.now = 299
    assert not watch.due() and sched.calls_of("object_info") == []
