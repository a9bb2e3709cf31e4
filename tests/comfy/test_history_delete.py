"""ComfyUI's POST /history on the front door: `delete` and `clear` take finished prompts out of the caller's
ComfyUI history only; tasks, images and files stay for the web pages, the REST API and /view."""

import json
from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from generation import services
from generation.models import Image, Task
from tests.comfy.test_front_door import prompt, run
from tests.conftest import media_files, png_bytes, worker_client

pytestmark = pytest.mark.django_db


def finished(client, wapi, prompt_id: str, color=(200, 30, 30)) -> Task:
    """A prompt of `client` run to completion with one image."""
    answer = prompt(client, prompt_id=prompt_id)
    assert answer.status_code == HTTPStatus.OK, answer.json()
    task = Task.objects.get(pk=answer.json()["number"])
    run(wapi, task, [("3", png_bytes(16, 16, color=color))])
    return task


def post_history(client, body, base="/comfy"):
    return client.post(f"{base}/history", body, format="json")


def hidden() -> set[str]:
    return set(Task.objects.exclude(comfy_history_hidden_at=None).values_list("client_prompt_id", flat=True))


def test_delete_takes_the_prompt_out_of_history_and_keeps_its_images(api, user, worker_and_token, base):
    wapi = worker_client(worker_and_token[1])
    gone, kept = finished(api, wapi, "gone"), finished(api, wapi, "kept", color=(1, 2, 3))
    ref = api.get(f"{base}/history/gone").json()["gone"]["outputs"]["3"]["images"][0]
    files = media_files()

    answer = post_history(api, {"delete": ["gone", "never-sent"]}, base)
    assert answer.status_code == HTTPStatus.OK and answer.content == b""
    assert api.get(f"{base}/history/gone").json() == {}
    assert list(api.get(f"{base}/history").json()) == ["kept"]
    gone.refresh_from_db()
    assert gone.comfy_history_hidden_at is not None and gone.status == Task.Status.COMPLETED
    assert hidden() == {"gone"}
    # Nothing else is lost: the images, their files, /view, the REST API and the web page still have them.
    assert Image.objects.filter(task=gone).count() == 1 and media_files() == files
    view = api.get(f"{base}/view", ref)
    assert view.status_code == HTTPStatus.OK and view.content == png_bytes(16, 16)
    detail = api.get(f"/api/v1/tasks/{gone.public_id}/")
    assert detail.status_code == HTTPStatus.OK and len(detail.json()["images"]) == 1
    web = Client()
    web.force_login(user)
    page = web.get(reverse("web:image", args=[Image.objects.get(task=gone).public_id]))
    assert page.status_code == HTTPStatus.OK
    assert kept.images.count() == 1


def test_delete_by_the_farms_id_and_again_changes_nothing(api, worker_and_token):
    wapi = worker_client(worker_and_token[1])
    assert prompt(api).status_code == HTTPStatus.OK
    task = Task.objects.get()
    run(wapi, task, [("3", png_bytes())])
    assert list(api.get("/comfy/history").json()) == [str(task.public_id)]
    assert post_history(api, {"delete": [str(task.public_id)]}).status_code == HTTPStatus.OK
    task.refresh_from_db()
    first = task.comfy_history_hidden_at
    assert first is not None and api.get("/comfy/history").json() == {}
    assert post_history(api, {"delete": [str(task.public_id)], "clear": True}).status_code == HTTPStatus.OK
    task.refresh_from_db()
    assert task.comfy_history_hidden_at == first


def test_clear_empties_only_the_callers_history(api, bob, worker_and_token, base):
    wapi = worker_client(worker_and_token[1])
    finished(api, wapi, "a1")
    finished(api, wapi, "a2")
    finished(bob, wapi, "b1")
    answer = post_history(api, {"clear": True}, base)
    assert answer.status_code == HTTPStatus.OK and answer.content == b""
    assert api.get(f"{base}/history").json() == {}
    assert list(bob.get(f"{base}/history").json()) == ["b1"]
    assert hidden() == {"a1", "a2"}
    assert Task.objects.filter(status=Task.Status.COMPLETED).count() == 3


def test_another_users_prompt_is_never_touched(api, bob, worker_and_token):
    wapi = worker_client(worker_and_token[1])
    theirs = finished(bob, wapi, "same-id")
    finished(bob, wapi, "only-bobs")
    mine = finished(api, wapi, "same-id", color=(9, 9, 9))
    # Alice names Bob's ids, his farm id, and an id they both use: only her own task goes.
    body = {"delete": ["only-bobs", str(theirs.public_id), "same-id"]}
    assert post_history(api, body).status_code == HTTPStatus.OK
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.comfy_history_hidden_at is not None and theirs.comfy_history_hidden_at is None
    assert set(bob.get("/comfy/history").json()) == {"same-id", "only-bobs"}
    assert bob.get("/comfy/history/same-id").json()["same-id"]["prompt"][0] == theirs.pk


def test_queued_and_running_prompts_are_unaffected_and_get_their_entry_later(api, worker_and_token):
    wapi = worker_client(worker_and_token[1])
    prompt(api, prompt_id="running")
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    wapi.post(
        f"/api/v1/worker/tasks/{job['task_id']}/start", {"lease_token": job["lease_token"]}, format="json"
    )
    prompt(api, prompt_id="queued")
    answer = post_history(api, {"delete": ["running", "queued"], "clear": True})
    assert answer.status_code == HTTPStatus.OK
    assert hidden() == set()
    assert [i[1] for i in api.get("/comfy/queue").json()["queue_pending"]] == ["queued"]
    running = Task.objects.get(client_prompt_id="running")
    assert running.status == Task.Status.RUNNING
    complete = wapi.post(
        f"/api/v1/worker/tasks/{running.public_id}/complete",
        {"lease_token": job["lease_token"], "images": [_png("3.png")], "node_ids": ["3"]},
        format="multipart",
    )
    assert complete.status_code == HTTPStatus.OK, complete.json()
    assert list(api.get("/comfy/history").json()) == ["running"]


def _png(name: str):
    return SimpleUploadedFile(name, png_bytes(), "image/png")


def test_anonymous_clients_clear_only_the_anonymous_space(settings, api, worker_and_token):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    wapi = worker_client(worker_and_token[1])
    anon = APIClient()
    finished(anon, wapi, "anon-1")
    finished(api, wapi, "alices")
    assert post_history(APIClient(), {"clear": True}).status_code == HTTPStatus.OK
    assert anon.get("/comfy/history").json() == {}
    assert list(api.get("/comfy/history").json()) == ["alices"]
    assert hidden() == {"anon-1"}


def test_without_credentials_nothing_is_touched(api, worker_and_token):
    finished(api, worker_client(worker_and_token[1]), "a1")
    answer = post_history(APIClient(), {"clear": True})
    assert answer.status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
    assert hidden() == set()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b"null",
        json.dumps({"clear": "yes"}).encode(),
        json.dumps({"clear": 1}).encode(),
        json.dumps({"delete": "a1"}).encode(),
        json.dumps({"delete": [1, 2]}).encode(),
        json.dumps({"delete": None}).encode(),
        json.dumps({"delete": ["a1"] * 1001, "clear": True}).encode(),
    ],
)
def test_bad_input_is_a_comfyui_shaped_400_and_changes_nothing(api, worker_and_token, body):
    finished(api, worker_client(worker_and_token[1]), "a1")
    answer = api.generic("POST", "/comfy/history", body, content_type="application/json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST, answer.content
    error = answer.json()
    assert set(error) == {"error", "node_errors"} and error["node_errors"] == {}
    assert set(error["error"]) == {"type", "message", "details", "extra_info"}
    assert error["error"]["type"] == "invalid_request"
    assert hidden() == set()


def test_an_empty_body_or_object_does_nothing(api, worker_and_token):
    finished(api, worker_client(worker_and_token[1]), "a1")
    assert api.generic("POST", "/comfy/history", b"").status_code == HTTPStatus.OK
    assert post_history(api, {}).status_code == HTTPStatus.OK
    assert post_history(api, {"clear": False, "delete": []}).status_code == HTTPStatus.OK
    assert hidden() == set()


def test_post_to_one_prompts_history_is_not_a_route(api, worker_and_token):
    finished(api, worker_client(worker_and_token[1]), "a1")
    answer = api.post("/comfy/history/a1", {"clear": True}, format="json")
    assert answer.status_code == HTTPStatus.METHOD_NOT_ALLOWED
    assert hidden() == set()


def test_the_service_counts_what_it_took_out(user, other_user, worker_and_token):
    wapi = worker_client(worker_and_token[1])
    api = APIClient()
    api.force_authenticate(user)
    finished(api, wapi, "a1")
    finished(api, wapi, "a2")
    assert services.comfy_history_hide(user=other_user, clear=True) == 0
    assert services.comfy_history_hide(user=user, prompt_ids=["a1", "zz"]) == 1
    assert services.comfy_history_hide(user=user, prompt_ids=[]) == 0
    assert services.comfy_history_hide(user=user, clear=True) == 1
    assert hidden() == {"a1", "a2"}


def test_a_retried_prompt_shows_in_history_again_when_it_ends(api, worker_and_token):
    wapi = worker_client(worker_and_token[1])
    prompt(api, prompt_id="flaky")
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    wapi.post(
        f"/api/v1/worker/tasks/{job['task_id']}/fail",
        {"lease_token": job["lease_token"], "code": "execution_error", "message": "boom", "retryable": False},
        format="json",
    )
    assert post_history(api, {"delete": ["flaky"]}).status_code == HTTPStatus.OK
    assert hidden() == {"flaky"}
    task = services.task_retry(task=Task.objects.get())
    assert task.comfy_history_hidden_at is None and api.get("/comfy/history").json() == {}  # queued again
    run(wapi, task, [("3", png_bytes())])
    assert api.get("/comfy/history/flaky").json()["flaky"]["status"]["status_str"] == "success"
