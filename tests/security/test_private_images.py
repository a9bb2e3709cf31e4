"""Private stays private (SECURITY.md, "Authorization"): a deleted account takes its tasks, images and files
with it instead of leaving them anonymous (and so readable), images go by an unguessable id, and nothing
lists other people's or anonymous tasks' images."""

import uuid
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from generation import jobs, services
from generation.models import Image, MetricCounter, Task, WebhookDelivery, WorkflowTemplate
from generation.services.deletion import PURGED_WEBHOOK_FAILURES
from tests.conftest import media_files
from tests.factories import TaskFactory
from tests.web.conftest import complete_next, completed
from tests.web.test_generate import form_data

pytestmark = pytest.mark.django_db

SMALL = {"size": "custom", "width": "64", "height": "64", "batch_size": "1"}


def files_of(task: Task) -> list[str]:
    return sorted(name for image in task.images.all() for name in (image.file.name, image.thumbnail.name))


def image_urls(image: Image) -> list[str]:
    return [
        reverse("web:image", kwargs={"image_id": image.public_id}),
        reverse("web:image-download", kwargs={"image_id": image.public_id}),
        image.file.url,  # kept for the test: the row is gone, so is the file
    ]


# --- A deleted account takes its tasks with it ----------------------------------------------------------


def test_deleting_an_account_deletes_its_tasks_images_and_files(
    user, other_user, worker, django_capture_on_commit_callbacks
):
    done = completed(user, worker, batch_size=2)
    theirs = completed(other_user, worker)
    queued = TaskFactory(owner=user)
    WebhookDelivery.objects.create(
        task=done, url="https://hooks.example/", event="completed", payload={}, attempts=3
    )
    kept = files_of(theirs)
    assert len(files_of(done)) == 4 and set(files_of(done)) | set(kept) == set(media_files())

    with django_capture_on_commit_callbacks(execute=True):
        assert services.user_delete(user=user) == 2

    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert not Task.objects.filter(pk__in=[done.pk, queued.pk]).exists()
    assert not Image.objects.filter(task_id=done.pk).exists()
    assert media_files() == kept  # the account's files are gone, nobody else's
    assert Task.objects.filter(owner=None).count() == 0  # nothing became anonymous
    assert list(Task.objects.all()) == [theirs]
    # The webhook failure counter never goes down (generation.metrics).
    assert MetricCounter.objects.get(name=PURGED_WEBHOOK_FAILURES).value == 3


def test_the_admin_deletes_an_account_with_its_tasks_and_files(
    user, other_user, staff, worker, client_for, django_capture_on_commit_callbacks
):
    done = completed(user, worker)
    theirs = completed(other_user, worker)
    admin = client_for(staff)
    url = reverse("admin:auth_user_delete", args=[user.pk])

    confirm = admin.get(url)
    assert confirm.status_code == HTTPStatus.OK
    assert "protected" not in confirm.content.decode()  # nothing stops the deletion
    assert f"{done.public_id} (completed)" in confirm.content.decode()  # and it says what goes with it
    with django_capture_on_commit_callbacks(execute=True):
        assert admin.post(url, {"post": "yes"}).status_code == HTTPStatus.FOUND

    assert not Task.objects.filter(pk=done.pk).exists()
    assert media_files() == files_of(theirs)

    # The list's bulk action too.
    with django_capture_on_commit_callbacks(execute=True):
        changelist = reverse("admin:auth_user_changelist")
        body = {"action": "delete_selected", "_selected_action": [other_user.pk], "post": "yes"}
        assert admin.post(changelist, body).status_code == HTTPStatus.FOUND
    assert not Task.objects.exists() and media_files() == []


def test_an_account_deleted_another_way_takes_its_rows_and_the_sweep_takes_its_files(user, worker):
    done = completed(user, worker)
    names = files_of(done)

    user.delete()  # e.g. from a shell: the rows cascade, nothing is left anonymous

    assert not Task.objects.exists() and not Image.objects.exists()
    assert media_files() == names
    assert jobs.media_sweep_orphans(now=timezone.now() + timedelta(hours=2)) == len(names)
    assert media_files() == []


def test_a_deleted_accounts_images_are_readable_by_nobody(user, other_user, worker, settings, client_for):
    """The finding: with SET_NULL the tasks became anonymous, and an anonymous visitor walking /images/1..N/
    found them with their prompts; any signed-in user could cancel them."""
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": False}
    image = completed(user, worker, prompt="my private prompt").images.get()
    running = TaskFactory(owner=user)
    urls = [
        *image_urls(image)[:2],
        f"/images/{image.pk}/",
        reverse("web:task", kwargs={"task_id": image.task.public_id}),
        f"/api/v1/tasks/{image.task.public_id}/",
        f"/status/{image.task.public_id}",
    ]
    services.user_delete(user=user)

    for visitor in (Client(), client_for(other_user)):
        for url in urls:
            assert visitor.get(url).status_code == HTTPStatus.NOT_FOUND, url
        cancel = visitor.post(reverse("web:task-cancel", kwargs={"task_id": running.public_id}))
        assert cancel.status_code == HTTPStatus.NOT_FOUND


# --- Images go by an unguessable id ---------------------------------------------------------------------


def test_image_pages_downloads_and_the_api_name_images_by_their_uuid(user, worker, client_for):
    task = completed(user, worker, batch_size=2)
    first, second = task.images.order_by("index")
    assert first.public_id.version == 4 and first.public_id != second.public_id
    alice = client_for(user)

    page = alice.get(reverse("web:image", kwargs={"image_id": first.public_id}))
    assert page.status_code == HTTPStatus.OK
    html = page.content.decode()
    assert f"/images/{first.public_id}/download/" in html
    assert f"/images/{first.public_id}/delete/" in html
    assert f'href="/images/{second.public_id}/"' in html  # the same batch
    assert f'href="/images/{first.public_id}/"' in alice.get(f"/tasks/{task.public_id}/").content.decode()
    assert f'href="/images/{first.public_id}/"' in alice.get(reverse("web:gallery")).content.decode()
    download = alice.get(f"/images/{first.public_id}/download/")
    assert download.status_code == HTTPStatus.OK
    assert b"".join(download.streaming_content) == first.file.open("rb").read()

    api = APIClient()
    api.force_authenticate(user)
    images = api.get(f"/api/v1/tasks/{task.public_id}/").json()["images"]
    assert {i["index"]: i["id"] for i in images} == {0: str(first.public_id), 1: str(second.public_id)}


def test_integer_image_urls_are_gone(user, worker, client_for):
    image = completed(user, worker).images.get()
    alice = client_for(user)
    for url in (f"/images/{image.pk}/", f"/images/{image.pk}/download/"):
        assert alice.get(url).status_code == HTTPStatus.NOT_FOUND, url
    assert alice.post(f"/images/{image.pk}/delete/").status_code == HTTPStatus.NOT_FOUND
    assert alice.get(f"/images/{uuid.uuid4()}/").status_code == HTTPStatus.NOT_FOUND
    assert Image.objects.filter(pk=image.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_every_existing_image_its_own_id():
    before = [("generation", "0009_image_public_id")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    task = old.get_model("generation", "Task").objects.create(
        prompt="from before", seed="1", template_id=WorkflowTemplate.objects.get(name="sd15-txt2img").pk
    )
    attempt = old.get_model("generation", "TaskAttempt").objects.create(
        task=task,
        number=1,
        lease_token=uuid.uuid4(),
        lease_expires_at=timezone.now(),
        leased_at=timezone.now(),
    )
    for index in range(3):
        old.get_model("generation", "Image").objects.create(
            task=task, attempt=attempt, index=index, file=f"images/{index}.png", width=64, height=64,
            size_bytes=1, sha256="0" * 64,
        )  # fmt: skip

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())  # back to the latest, for the tests after

    ids = list(Image.objects.values_list("public_id", flat=True))
    assert len(ids) == 3 and None not in ids and len(set(ids)) == 3


# --- Anonymous tasks: their session and whoever holds the id, nothing more ------------------------------


def test_an_anonymous_task_is_seen_by_its_browser_and_by_holders_of_its_id_only(settings, user, worker):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    browser = Client()
    assert browser.post(reverse("web:generate"), form_data(**SMALL)).status_code == HTTPStatus.FOUND
    task = complete_next(worker)
    image = task.images.get()
    assert task.owner is None

    assert [i.pk for i in browser.get(reverse("web:gallery")).context["page"].images] == [image.pk]
    stranger = Client()
    assert stranger.get(reverse("web:gallery")).context["page"].images == []  # not listed
    for url in image_urls(image)[:2]:  # but the id is the capability: whoever holds it may look
        assert stranger.get(url).status_code == HTTPStatus.OK, url

    api = APIClient()
    api.force_authenticate(user)
    assert api.get("/api/v1/tasks/").json()["results"] == []  # not in anybody's list


def test_an_anonymous_visitor_cannot_walk_the_images(settings, user, worker):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    private = completed(user, worker, prompt="alice's secret").images.get()
    anonymous = completed(None, worker, prompt="someone's anonymous task").images.get()
    visitor = Client()

    gallery = visitor.get(reverse("web:gallery"))
    assert gallery.context["page"].images == []
    assert "secret" not in gallery.content.decode() and "anonymous task" not in gallery.content.decode()
    for pk in range(1, max(private.pk, anonymous.pk) + 2):
        assert visitor.get(f"/images/{pk}/").status_code == HTTPStatus.NOT_FOUND
    assert visitor.get(f"/images/{private.public_id}/").status_code == HTTPStatus.NOT_FOUND


def test_only_staff_cancel_an_anonymous_task_while_anonymous_submit_is_off(settings, other_user, staff):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": False}
    task = TaskFactory()
    signed_in = APIClient()
    signed_in.force_authenticate(other_user)
    assert signed_in.post(f"/api/v1/tasks/{task.public_id}/cancel/").status_code == HTTPStatus.NOT_FOUND
    task.refresh_from_db()
    assert task.status == Task.Status.QUEUED
    staff_api = APIClient()
    staff_api.force_authenticate(staff)
    assert staff_api.post(f"/api/v1/tasks/{task.public_id}/cancel/").status_code == HTTPStatus.OK
