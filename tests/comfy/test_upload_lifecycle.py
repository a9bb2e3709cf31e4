"""Uploads' lifecycle: deleting one (never while a queued or running task needs it; the file only after the
commit), what finished tasks keep, the retention of temp uploads, and the REST API (/api/v1/uploads/)."""

import threading
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from generation import jobs, services
from generation.exceptions import InputsDeleted, NotFound, UploadInUse, WorkflowRejected
from generation.models import InputImage, Task
from generation.services import workflow_submit
from tests.comfy.test_input_images import load_image
from tests.comfy.uploads import image_loader_worker, make_upload, task_using
from tests.conftest import media_files

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _loader(db):
    image_loader_worker()


# --- The service ---------------------------------------------------------------------------------------


def test_deleting_an_upload_removes_the_row_and_after_the_commit_its_file(
    user, django_capture_on_commit_callbacks
):
    upload = make_upload(user)
    other = make_upload(user, "dog.png")
    assert len(media_files()) == 2
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.input_image_delete(upload=upload)
        assert not InputImage.objects.filter(pk=upload.pk).exists()
        assert len(media_files()) == 2  # not before the commit
    assert len(callbacks) == 1
    callbacks[0]()
    assert media_files() == [other.file.name]


def test_a_rolled_back_delete_keeps_the_row_and_the_file(user, django_capture_on_commit_callbacks):
    upload = make_upload(user)
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        services.input_image_delete(upload=upload)
        raise RuntimeError("the caller's transaction fails after the delete")
    assert callbacks == []
    assert InputImage.objects.filter(pk=upload.pk).exists()
    assert media_files() == [upload.file.name]


@pytest.mark.parametrize("status", [Task.Status.QUEUED, Task.Status.LEASED, Task.Status.RUNNING])
def test_an_upload_an_unfinished_task_needs_is_kept_naming_the_tasks(
    user, status, django_capture_on_commit_callbacks
):
    upload = make_upload(user)
    tasks = [task_using(user, upload, status), task_using(user, upload, status)]
    task_using(user, upload, Task.Status.COMPLETED)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(UploadInUse) as refused:
        services.input_image_delete(upload=upload)
    error = refused.value
    assert error.status == HTTPStatus.CONFLICT and error.code == "upload_in_use"
    assert "cat.png is needed by 2 queued or running task(s)" in error.detail
    assert error.fields == {"tasks": [str(t.public_id) for t in tasks]}
    assert InputImage.objects.filter(pk=upload.pk).exists() and media_files() == [upload.file.name]
    assert all(t.input_images.count() == 1 for t in tasks)


@pytest.mark.parametrize("status", Task.FINISHED_STATUSES)
def test_finished_tasks_keep_their_workflow_and_lose_only_the_record(
    user, status, django_capture_on_commit_callbacks
):
    upload = make_upload(user, subfolder="in", kind="temp")
    task = task_using(user, upload, status)
    with django_capture_on_commit_callbacks(execute=True):
        services.input_image_delete(upload=upload)
    task.refresh_from_db()
    assert task.status == status
    assert task.workflow["1"]["inputs"]["image"] == "in/cat.png [temp]"  # its history still names it
    assert task.input_images.count() == 0
    assert media_files() == []


def test_a_task_whose_upload_was_deleted_cannot_be_retried(user):
    kept, gone = make_upload(user, "kept.png"), make_upload(user, "gone.png")
    still = task_using(user, kept, Task.Status.FAILED)
    broken = task_using(user, gone, Task.Status.FAILED)
    services.input_image_delete(upload=gone)
    with pytest.raises(InputsDeleted) as refused:
        services.task_retry(task=broken)
    assert refused.value.status == HTTPStatus.CONFLICT and "gone.png" in refused.value.detail
    broken.refresh_from_db()
    assert broken.status == Task.Status.FAILED
    assert services.task_retry(task=still).status == Task.Status.QUEUED


def test_deleting_twice_is_not_found(user):
    upload = make_upload(user)
    services.input_image_delete(upload=upload)
    with pytest.raises(NotFound):
        services.input_image_delete(upload=upload)


def test_a_submit_whose_upload_went_meanwhile_is_refused_like_an_unknown_name(user, monkeypatch):
    """The submit reads the uploads before its transaction; a delete that lands in between is seen in it
    (inputs_hold), and the workflow is refused as ComfyUI refuses an unknown image, with no task queued."""
    upload = make_upload(user)
    read = workflow_submit.inputs_needed

    def read_then_lose_it(**kwargs):
        found = read(**kwargs)
        services.input_image_delete(upload=upload)  # another request deletes it now
        return found

    monkeypatch.setattr(workflow_submit, "inputs_needed", read_then_lose_it)
    with pytest.raises(WorkflowRejected) as refused:
        services.task_submit_workflow(owner=user, workflow=load_image("cat.png"))
    assert "Invalid image file: cat.png" in refused.value.detail
    assert not Task.objects.exists()


# --- Retention of temp uploads -------------------------------------------------------------------------


def _age(upload: InputImage, hours: float) -> None:
    InputImage.objects.filter(pk=upload.pk).update(created_at=timezone.now() - timedelta(hours=hours))


def test_the_retention_job_deletes_old_temp_uploads_but_those_an_unfinished_task_needs(
    user, other_user, settings, django_capture_on_commit_callbacks
):
    settings.T2I = settings.T2I | {"TEMP_UPLOAD_HOURS": 24}
    old = make_upload(user, "old.png", kind="temp")
    used_done = make_upload(user, "done.png", kind="temp")
    used_queued = make_upload(user, "queued.png", kind="temp")
    used_running = make_upload(other_user, "running.png", kind="temp")
    young = make_upload(user, "young.png", kind="temp")
    old_input = make_upload(user, "input.png")
    task_using(user, used_done, Task.Status.COMPLETED)
    task_using(user, used_queued, Task.Status.QUEUED)
    task_using(other_user, used_running, Task.Status.RUNNING)
    for upload in (old, used_done, used_queued, used_running, old_input):
        _age(upload, 25)
    _age(young, 23)
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs.retention_job() == "0 task(s) purged, 2 temp upload(s) deleted"
    left = set(InputImage.objects.values_list("name", flat=True))
    assert left == {"queued.png", "running.png", "young.png", "input.png"}
    assert sorted(media_files()) == sorted(InputImage.objects.values_list("file", flat=True))
    assert jobs.retention_job() == "0 task(s) purged"


def test_temp_retention_works_in_batches_and_is_off_at_zero(
    user, settings, django_capture_on_commit_callbacks
):
    uploads = [make_upload(user, f"t{i}.png", kind="temp") for i in range(5)]
    for upload in uploads:
        _age(upload, 48)
    settings.T2I = settings.T2I | {"TEMP_UPLOAD_HOURS": 0}
    assert services.input_images_purge_temp() == 0
    settings.T2I = settings.T2I | {"TEMP_UPLOAD_HOURS": 1.5}
    with django_capture_on_commit_callbacks(execute=True):
        assert services.input_images_purge_temp(batch=2) == 5
    assert not InputImage.objects.exists() and media_files() == []


# --- The REST API -----------------------------------------------------------------------------------------


@pytest.fixture
def bob(other_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(other_user)
    return client


def test_the_list_shows_your_uploads_only_newest_first(api, user, other_user):
    first = make_upload(user, "first.png", subfolder="clip", size=(20, 10))
    second = make_upload(user, "second.png", kind="temp")
    make_upload(other_user, "bobs.png")
    task_using(user, first, Task.Status.COMPLETED)
    task_using(user, first, Task.Status.QUEUED)
    answer = api.get("/api/v1/uploads/")
    assert answer.status_code == HTTPStatus.OK
    body = answer.json()
    assert body["next"] is None
    assert [row["name"] for row in body["results"]] == ["second.png [temp]", "clip/first.png"]
    row = body["results"][1]
    assert row == {
        "id": str(first.public_id),
        "name": "clip/first.png",
        "filename": "first.png",
        "subfolder": "clip",
        "type": "input",
        "width": 20,
        "height": 10,
        "size_bytes": first.size_bytes,
        "sha256": first.sha256,
        "created_at": row["created_at"],
        "task_count": 2,
        "unfinished_task_count": 1,
        "file_url": f"http://testserver/api/v1/uploads/{first.public_id}/file",
    }
    temp = api.get("/api/v1/uploads/", {"type": "temp"}).json()["results"]
    assert [r["id"] for r in temp] == [str(second.public_id)]


def test_the_list_pages_and_refuses_a_bad_type(api, user):
    for i in range(3):
        make_upload(user, f"u{i}.png")
    page = api.get("/api/v1/uploads/", {"page_size": 2}).json()
    assert [r["filename"] for r in page["results"]] == ["u2.png", "u1.png"]
    rest = api.get(page["next"]).json()
    assert [r["filename"] for r in rest["results"]] == ["u0.png"]
    bad = api.get("/api/v1/uploads/", {"type": "output"})
    assert bad.status_code == HTTPStatus.BAD_REQUEST
    assert bad.json()["fields"] == {"type": ["One of input, temp."]}


def test_the_list_costs_the_same_queries_for_many_uploads(api, user, django_assert_max_num_queries):
    for i in range(20):
        task_using(user, make_upload(user, f"u{i}.png"))
    with django_assert_max_num_queries(3):  # the session/user, the page, nothing per row
        assert len(api.get("/api/v1/uploads/").json()["results"]) == 20


def test_uploads_need_credentials(anon, user):
    upload = make_upload(user)
    assert anon.get("/api/v1/uploads/").status_code == HTTPStatus.UNAUTHORIZED
    assert anon.delete(f"/api/v1/uploads/{upload.public_id}/").status_code == HTTPStatus.UNAUTHORIZED
    assert InputImage.objects.filter(pk=upload.pk).exists()


def test_delete_answers_204_and_the_upload_is_gone(api, user, django_capture_on_commit_callbacks):
    upload = make_upload(user)
    assert api.get(f"/api/v1/uploads/{upload.public_id}/").json()["name"] == "cat.png"
    with django_capture_on_commit_callbacks(execute=True):
        answer = api.delete(f"/api/v1/uploads/{upload.public_id}/")
    assert answer.status_code == HTTPStatus.NO_CONTENT
    assert not InputImage.objects.exists() and media_files() == []
    again = api.delete(f"/api/v1/uploads/{upload.public_id}/")
    assert again.status_code == HTTPStatus.NOT_FOUND
    assert again.json() == {"error": "not_found", "detail": "No such upload.", "fields": {}}


def test_another_users_upload_is_a_404_as_an_unknown_one(api, bob, user):
    upload = make_upload(user)
    for path in (f"/api/v1/uploads/{upload.public_id}/", f"/api/v1/uploads/{upload.public_id}/file"):
        answer = bob.get(path)
        assert answer.status_code == HTTPStatus.NOT_FOUND
        assert answer.json()["error"] == "not_found"
    gone = bob.delete(f"/api/v1/uploads/{upload.public_id}/")
    assert gone.status_code == HTTPStatus.NOT_FOUND
    assert gone.json() == {"error": "not_found", "detail": "No such upload.", "fields": {}}
    assert InputImage.objects.filter(pk=upload.pk).exists()
    assert bob.get("/api/v1/uploads/").json()["results"] == []


@pytest.mark.parametrize("bad", [str(1), "not-a-uuid", "00000000-0000-0000-0000-000000000000", "..%2F"])
def test_bad_ids_are_a_json_404(api, user, bad):
    upload = make_upload(user)
    for method in (api.get, api.delete):
        answer = method(f"/api/v1/uploads/{bad}/")
        assert answer.status_code == HTTPStatus.NOT_FOUND
        assert answer.json()["error"] == "not_found"
    assert InputImage.objects.filter(pk=upload.pk).exists()


def test_deleting_an_upload_a_queued_task_needs_is_a_409_naming_it(api, user):
    upload = make_upload(user)
    task = task_using(user, upload)
    answer = api.delete(f"/api/v1/uploads/{upload.public_id}/")
    assert answer.status_code == HTTPStatus.CONFLICT
    body = answer.json()
    assert body["error"] == "upload_in_use"
    assert body["fields"] == {"tasks": [str(task.public_id)]}
    assert "needed by 1 queued or running task(s)" in body["detail"] and str(task.public_id) in body["detail"]
    assert InputImage.objects.filter(pk=upload.pk).exists()
    services.task_cancel(task=task)
    assert api.delete(f"/api/v1/uploads/{upload.public_id}/").status_code == HTTPStatus.NO_CONTENT


def test_the_file_is_served_to_its_owner(api, user):
    upload = make_upload(user)
    answer = api.get(f"/api/v1/uploads/{upload.public_id}/file")
    assert answer.status_code == HTTPStatus.OK
    assert answer["Content-Type"] == "image/png" and answer["Cache-Control"] == "private, max-age=3600"
    assert b"".join(answer.streaming_content) == upload.file.open("rb").read()


def test_the_schema_documents_the_uploads_api(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert {"get"} <= set(schema["paths"]["/api/v1/uploads/"])
    assert {"get", "delete"} <= set(schema["paths"]["/api/v1/uploads/{upload_id}/"])
    assert "409" in schema["paths"]["/api/v1/uploads/{upload_id}/"]["delete"]["responses"]
    assert "unfinished_task_count" in schema["components"]["schemas"]["UploadOutput"]["properties"]


# --- At the same moment (PostgreSQL's row locks) -------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_delete_or_the_retention_meeting_a_submit_never_takes_the_upload_from_its_task(
    user, settings, monkeypatch
):
    """A submit holds the upload's row from its check until its task is queued: a delete waits for it and
    then refuses; the retention job skips the row (and takes it on a later run, once the task has ended)."""
    settings.T2I = settings.T2I | {"TEMP_UPLOAD_HOURS": 1}
    upload = make_upload(user, kind="temp")
    _age(upload, 2)
    held, release, results = threading.Event(), threading.Event(), {}
    hold = workflow_submit.inputs_hold

    def slow_hold(**kwargs):
        rows = hold(**kwargs)
        held.set()
        release.wait(10)
        return rows

    def submit():
        try:
            results["task"] = services.task_submit_workflow(owner=user, workflow=load_image("cat.png [temp]"))
        finally:
            connection.close()

    def delete():
        try:
            services.input_image_delete(upload=upload)
        except UploadInUse as exc:
            results["refused"] = exc
        finally:
            connection.close()

    monkeypatch.setattr(workflow_submit, "inputs_hold", slow_hold)
    submitting = threading.Thread(target=submit)
    submitting.start()
    try:
        assert held.wait(10)
        assert services.input_images_purge_temp() == 0  # skipped, not waited for
        deleting = threading.Thread(target=delete)
        deleting.start()
        deleting.join(0.5)
        assert deleting.is_alive()  # waiting for the submit's lock
    finally:
        release.set()
        submitting.join(10)
    deleting.join(10)
    assert "cat.png [temp] is needed by 1 queued" in results["refused"].detail
    assert list(results["task"].input_images.all()) == [upload]
    assert services.input_images_purge_temp() == 0  # its task is queued
