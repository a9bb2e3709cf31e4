"""The uploads' admin page: owner, ComfyUI name, size, used-by count, and a delete action that obeys the same
rule as the owner's delete (services.input_image_delete)."""

from http import HTTPStatus

import pytest
from django.urls import reverse

from generation.models import InputImage, Task
from tests.comfy.uploads import image_loader_worker, make_upload, task_using
from tests.conftest import media_files

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:generation_inputimage_changelist")


@pytest.fixture(autouse=True)
def _loader(db):
    image_loader_worker()


def test_the_changelist_and_the_change_page_show_an_upload(admin_client, user):
    upload = make_upload(user, "cat.png", subfolder="pets", kind="temp", size=(30, 20))
    task_using(user, upload, Task.Status.COMPLETED)
    task_using(user, upload)
    page = admin_client.get(CHANGELIST)
    assert page.status_code == HTTPStatus.OK
    html = page.content.decode()
    assert "pets/cat.png [temp]" in html and "alice" in html and "30×20" in html
    assert "2 task(s), 1 not finished" in html
    assert "delete_selected" not in html  # Django's own delete would skip the rule
    detail = admin_client.get(reverse("admin:generation_inputimage_change", args=[upload.pk]))
    assert detail.status_code == HTTPStatus.OK and str(upload.public_id) in detail.content.decode()
    assert admin_client.get(CHANGELIST, {"q": "cat"}).status_code == HTTPStatus.OK


def test_the_delete_action_keeps_uploads_an_unfinished_task_needs(
    admin_client, user, django_capture_on_commit_callbacks
):
    needed, free = make_upload(user, "needed.png"), make_upload(user, "free.png")
    task_using(user, needed)
    with django_capture_on_commit_callbacks(execute=True):
        answer = admin_client.post(
            CHANGELIST,
            {"action": "delete_uploads", "_selected_action": [needed.pk, free.pk]},
            follow=True,
        )
    text = " ".join(str(m) for m in answer.context["messages"])
    assert "1 upload(s) deleted." in text and "needed.png is needed by 1 queued or running task(s)" in text
    assert list(InputImage.objects.values_list("name", flat=True)) == ["needed.png"]
    assert media_files() == [needed.file.name]
