"""Cancelling tasks and deleting images from the web pages: who may, and what it leaves behind."""

from http import HTTPStatus

import pytest
from django.core.files.storage import default_storage
from django.urls import reverse

from generation import services
from generation.models import Image, Task
from tests.factories import TaskFactory
from tests.web.conftest import completed

pytestmark = pytest.mark.django_db


def cancel_url(task) -> str:
    return reverse("web:task-cancel", kwargs={"task_id": task.public_id})


def test_owner_cancels_a_queued_task(alice, user):
    task = TaskFactory(owner=user)
    response = alice.post(cancel_url(task))
    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"] == reverse("web:task", kwargs={"task_id": task.public_id})
    task.refresh_from_db()
    assert task.status == Task.Status.CANCELLED and task.error_code == "cancelled"
    page = alice.get(response["Location"])
    assert "The task was cancelled." in page.content.decode()
    assert "This task was cancelled before it finished." in page.content.decode()


def test_cancel_a_running_task_from_the_queue_page(alice, user, worker):
    task = TaskFactory(owner=user)
    services.task_lease_next(worker=worker)
    response = alice.post(cancel_url(task), {"next": reverse("web:queue")})
    assert response["Location"] == reverse("web:queue")
    task.refresh_from_db()
    assert task.status == Task.Status.CANCELLED and task.lease_token is None


def test_cancel_ignores_an_offsite_next(alice, user):
    task = TaskFactory(owner=user)
    response = alice.post(cancel_url(task), {"next": "https://evil.example/"})
    assert response["Location"] == reverse("web:task", kwargs={"task_id": task.public_id})


def test_cancel_a_finished_task_says_so(alice, user, worker):
    task = completed(user, worker)
    response = alice.post(cancel_url(task), follow=True)
    assert "The task is already completed." in response.content.decode()
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED


def test_others_cannot_cancel(bob, client, user):
    task = TaskFactory(owner=user)
    assert bob.post(cancel_url(task)).status_code == HTTPStatus.NOT_FOUND
    assert client.post(cancel_url(task)).status_code == HTTPStatus.NOT_FOUND
    task.refresh_from_db()
    assert task.status == Task.Status.QUEUED


def test_cancel_needs_post_and_csrf(client_for, user):
    task = TaskFactory(owner=user)
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.get(cancel_url(task)).status_code == HTTPStatus.METHOD_NOT_ALLOWED
    assert strict.post(cancel_url(task)).status_code == HTTPStatus.FORBIDDEN
    task.refresh_from_db()
    assert task.status == Task.Status.QUEUED


def delete_url(image) -> str:
    return reverse("web:image-delete", kwargs={"image_id": image.public_id})


def test_owner_deletes_an_image_with_its_files(alice, user, worker, django_capture_on_commit_callbacks):
    image = completed(user, worker).images.get()
    names = [image.file.name, image.thumbnail.name]
    assert all(default_storage.exists(name) for name in names)
    with django_capture_on_commit_callbacks(execute=True):  # files go after the row's delete commits
        response = alice.post(delete_url(image))
    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"] == reverse("web:gallery")
    assert not Image.objects.filter(pk=image.pk).exists()
    assert not any(default_storage.exists(name) for name in names)


def test_staff_may_delete_anyones_image(client_for, staff, user, worker):
    image = completed(user, worker).images.get()
    assert client_for(staff).post(delete_url(image)).status_code == HTTPStatus.FOUND
    assert not Image.objects.filter(pk=image.pk).exists()


def test_a_user_cannot_delete_another_users_image(bob, user, worker, django_capture_on_commit_callbacks):
    image = completed(user, worker).images.get()
    with django_capture_on_commit_callbacks(execute=True):
        response = bob.post(delete_url(image))
    assert response.status_code == HTTPStatus.NOT_FOUND  # bob may not even see it
    assert Image.objects.filter(pk=image.pk).exists()
    assert default_storage.exists(image.file.name) and default_storage.exists(image.thumbnail.name)


def test_seeing_an_anonymous_image_is_not_enough_to_delete_it(bob, client, worker, settings):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    image = completed(None, worker).images.get()
    page = bob.get(reverse("web:image", kwargs={"image_id": image.public_id}))
    assert page.status_code == HTTPStatus.OK and not page.context["may_delete"]
    assert "Delete image" not in page.content.decode()
    assert bob.post(delete_url(image)).status_code == HTTPStatus.FORBIDDEN
    assert client.post(delete_url(image)).status_code == HTTPStatus.FORBIDDEN
    assert Image.objects.filter(pk=image.pk).exists() and default_storage.exists(image.file.name)


def test_delete_needs_post(alice, user, worker):
    image = completed(user, worker).images.get()
    assert alice.get(delete_url(image)).status_code == HTTPStatus.METHOD_NOT_ALLOWED
    assert Image.objects.filter(pk=image.pk).exists()
