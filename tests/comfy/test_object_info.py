"""GET /comfy/object_info: the online workers' whole /object_info merged, in ComfyUI's shape; partial (and
saying so) only while some worker has reported its node classes and model files only."""

from http import HTTPStatus

import pytest

from tests.comfy.specs import give, subset
from tests.conftest import make_worker

pytestmark = pytest.mark.django_db


def test_one_spec_is_served_as_comfyui_answered_it(api, worker, django_assert_max_num_queries):
    info = subset()
    give(worker, info)
    answer = api.get("/comfy/object_info")
    assert answer.status_code == HTTPStatus.OK and "X-T2I-Partial" not in answer
    assert answer.json() == info
    assert list(answer.json()["KSampler"]["input"]["required"]) == list(info["KSampler"]["input"]["required"])
    assert api.get("/comfy/api/object_info/EmptyImage").json() == {"EmptyImage": info["EmptyImage"]}
    assert api.get("/comfy/object_info/NoSuchNode").json() == {}
    with django_assert_max_num_queries(3):  # the user, the workers; the spec comes from the process's cache
        assert api.get("/comfy/object_info").status_code == HTTPStatus.OK


def test_model_lists_merge_across_workers_and_other_classes_join(api, worker):
    give(worker, subset(checkpoints=["b.safetensors", "c.safetensors"]))
    other, _ = make_worker("gpu-2")
    theirs = subset(checkpoints=["a.safetensors", "c.safetensors"])
    theirs["ImageBlur"]["python_module"] = "custom_nodes.blur"  # another version: the first one's entry stays
    theirs["OnlyHere"] = {**theirs["EmptyImage"], "name": "OnlyHere"}
    give(other, theirs)
    info = api.get("/comfy/object_info").json()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [
        "a.safetensors",
        "b.safetensors",
        "c.safetensors",
    ]
    assert info["OnlyHere"]["name"] == "OnlyHere" and info["ImageBlur"]["python_module"] in (
        "nodes",
        "custom_nodes.blur",
    )
    assert info["KSampler"] == subset()["KSampler"]


def test_partial_only_while_a_worker_reports_no_spec(api, worker):
    give(worker, subset(checkpoints=["b.safetensors"]))
    make_worker(
        "old-daemon",
        {**subset_caps(), "node_classes": ["CheckpointLoaderSimple", "SaveImage", "OldCustomNode"]},
    )
    answer = api.get("/comfy/object_info")
    assert answer["X-T2I-Partial"]
    info = answer.json()
    assert info["OldCustomNode"]["input"] == {"required": {}}  # as far as it reports it
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [
        "b.safetensors",
        "old.safetensors",
    ]


def test_a_spec_the_scheduler_does_not_hold_yet_is_partial(api, worker):
    give(worker, subset(), stored=False)
    assert api.get("/comfy/object_info")["X-T2I-Partial"]


def test_offline_workers_are_left_out(api, worker):
    give(worker, subset())
    gone, _ = make_worker("gone")
    extra = subset()
    extra["GoneNode"] = extra["EmptyImage"]
    give(gone, extra)
    type(gone).objects.filter(pk=gone.pk).update(status="offline")
    assert "GoneNode" not in api.get("/comfy/object_info").json()


def subset_caps() -> dict:
    from tests.conftest import capabilities

    caps = capabilities(checkpoints=["old.safetensors"])
    caps["model_inputs"] = {"CheckpointLoaderSimple": {"ckpt_name": ["old.safetensors"]}}
    return caps
