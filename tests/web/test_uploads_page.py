"""The "My uploads" pages: the signed-in user's uploads, their images, and deleting one (a confirmation page,
then a POST with its CSRF token), never another user's."""

import re
from http import HTTPStatus

import pytest
from django.test import Client
from django.urls import reverse

from generation.models import InputImage, Task
from tests.comfy.uploads import image_loader_worker, make_upload, task_using
from tests.conftest import media_files

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _loader(db):
    image_loader_worker()


UPLOADS = reverse("web:uploads")


def delete_url(upload) -> str:
    return reverse("web:upload-delete", kwargs={"upload_id": upload.public_id})


def image_url(upload) -> str:
    return reverse("web:upload-image", kwargs={"upload_id": upload.public_id})


def test_the_page_lists_your_uploads_by_their_comfyui_names(alice, user, other_user):
    plain = make_upload(user, "cat.png", size=(40, 30))
    nested = make_upload(user, "dog.png", subfolder="pets/2024", kind="temp")
    make_upload(other_user, "bobs-secret.png")
    task_using(user, plain, Task.Status.COMPLETED)
    task_using(user, plain)
    page = alice.get(UPLOADS)
    assert page.status_code == HTTPStatus.OK
    html = page.content.decode()
    assert "bobs-secret" not in html
    text = re.sub(r"<[^>]+>", "", html)
    assert "dog.png [temp]" in text and "pets/2024/dog.png" in text
    assert "40 × 30" in text and "used by 2 tasks (1 not finished)" in text and "used by no task" in text
    assert f'src="{image_url(plain)}"' in html and f'href="{delete_url(nested)}"' in html
    assert text.index("dog.png") < text.index("cat.png")  # newest first
    assert f'href="{UPLOADS}" aria-current="page"' in html  # the menu links it


def test_the_page_needs_a_sign_in(client):
    answer = client.get(UPLOADS)
    assert answer.status_code == HTTPStatus.FOUND and "/accounts/login/" in answer["Location"]


def test_the_page_is_paginated(alice, user):
    for i in range(26):
        make_upload(user, f"u{i:02d}.png")
    first = alice.get(UPLOADS).content.decode()
    assert "u25.png" in first and "u02.png" in first and "u01.png" not in first
    assert "Page 1 of 2" in first and 'href="?page=2"' in first
    second = alice.get(UPLOADS, {"page": 2}).content.decode()
    assert "u01.png" in second and "u00.png" in second and "u02.png" not in second
    assert alice.get(UPLOADS, {"page": "x"}).status_code == HTTPStatus.OK  # a bad page number: the first


def test_the_image_is_served_to_its_owner_only(alice, bob, user):
    upload = make_upload(user)
    mine = alice.get(image_url(upload))
    assert mine.status_code == HTTPStatus.OK and mine["Content-Type"] == "image/png"
    assert b"".join(mine.streaming_content) == upload.file.open("rb").read()
    assert bob.get(image_url(upload)).status_code == HTTPStatus.NOT_FOUND


def test_deleting_asks_first_then_posts(alice, user, django_capture_on_commit_callbacks):
    upload = make_upload(user, subfolder="in")
    task_using(user, upload, Task.Status.COMPLETED)
    confirm = alice.get(delete_url(upload))
    assert confirm.status_code == HTTPStatus.OK
    html = confirm.content.decode()
    assert "Delete <code>in/<wbr>cat<wbr>.png</code>?" in html
    assert "cannot be retried" in html and 'name="csrfmiddlewaretoken"' in html
    assert InputImage.objects.filter(pk=upload.pk).exists()  # a GET deletes nothing
    with django_capture_on_commit_callbacks(execute=True):
        done = alice.post(delete_url(upload), follow=True)
    assert done.redirect_chain == [(UPLOADS, HTTPStatus.FOUND)]
    assert "in/cat.png was deleted." in done.content.decode()
    assert not InputImage.objects.exists() and media_files() == []


def test_deleting_needs_the_csrf_token(user):
    upload = make_upload(user)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post(delete_url(upload)).status_code == HTTPStatus.FORBIDDEN
    assert InputImage.objects.filter(pk=upload.pk).exists()
    form = strict.get(delete_url(upload)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    assert strict.post(delete_url(upload), {"csrfmiddlewaretoken": token}).status_code == HTTPStatus.FOUND
    assert not InputImage.objects.exists()


def test_another_users_upload_cannot_be_seen_or_deleted(bob, user):
    upload = make_upload(user)
    assert bob.get(delete_url(upload)).status_code == HTTPStatus.NOT_FOUND
    assert bob.post(delete_url(upload)).status_code == HTTPStatus.NOT_FOUND
    assert InputImage.objects.filter(pk=upload.pk).exists()
    unknown = reverse("web:upload-delete", args=["00000000-0000-0000-0000-000000000000"])
    assert bob.post(unknown).status_code == HTTPStatus.NOT_FOUND


def test_an_upload_a_queued_task_needs_is_kept_and_the_page_says_why(alice, user):
    upload = make_upload(user)
    task = task_using(user, upload)
    confirm = alice.get(delete_url(upload)).content.decode()
    assert "1 queued or running task needs this upload" in confirm
    assert reverse("web:task", args=[task.public_id]) in confirm and "Delete upload" not in confirm
    refused = alice.post(delete_url(upload), follow=True)
    assert refused.redirect_chain == [(delete_url(upload), HTTPStatus.FOUND)]
    assert "is needed by 1 queued or running task(s)" in refused.content.decode()
    assert InputImage.objects.filter(pk=upload.pk).exists()
