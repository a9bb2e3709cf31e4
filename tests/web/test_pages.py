"""Every page renders for the visitors it is for, and sends the others to log in or to a 404."""

import uuid
from http import HTTPStatus

import pytest
from django.urls import reverse

from generation import services
from generation.templatetags.web_format import name_breaks
from tests.factories import TaskFactory
from tests.web.conftest import completed

pytestmark = pytest.mark.django_db


def test_generate_page_needs_login(client, alice):
    """Signed out, the home page says what the site is and how to get in, instead of bouncing to login."""
    response = client.get(reverse("web:generate"))
    assert response.status_code == HTTPStatus.OK
    html = response.content.decode()
    assert "Images from text" in html and 'name="prompt"' not in html
    assert f'href="{reverse("web:login")}"' in html and f'href="{reverse("web:signup")}"' in html
    page = alice.get(reverse("web:generate"))
    assert page.status_code == HTTPStatus.OK
    assert b'name="prompt"' in page.content


def test_generate_page_open_to_anonymous_when_allowed(client, settings):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    assert client.get(reverse("web:generate")).status_code == HTTPStatus.OK


def test_nav_marks_the_current_page(alice):
    html = alice.get(reverse("web:gallery")).content.decode()
    assert f'href="{reverse("web:gallery")}" aria-current="page"' in html
    assert f'href="{reverse("web:generate")}" aria-current' not in html


def test_task_page_owner_staff_and_others(alice, bob, client_for, staff, user):
    task = TaskFactory(owner=user)
    url = reverse("web:task", kwargs={"task_id": task.public_id})
    page = alice.get(url)
    assert page.status_code == HTTPStatus.OK
    assert b"Number 1 in the queue" in page.content
    assert reverse("api:task-detail", kwargs={"task_id": task.public_id}).encode() in page.content
    assert client_for(staff).get(url).status_code == HTTPStatus.OK
    assert bob.get(url).status_code == HTTPStatus.NOT_FOUND
    assert client_for(None).get(url).status_code == HTTPStatus.NOT_FOUND
    missing = reverse("web:task", kwargs={"task_id": uuid.uuid4()})
    assert alice.get(missing).status_code == HTTPStatus.NOT_FOUND


def test_anonymous_task_is_visible_to_whoever_has_the_link(client, bob, settings):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    task = TaskFactory()
    url = reverse("web:task", kwargs={"task_id": task.public_id})
    assert client.get(url).status_code == HTTPStatus.OK
    assert bob.get(url).status_code == HTTPStatus.OK


def test_completed_task_page_shows_images_and_worker(alice, user, worker):
    task = completed(user, worker)
    image = task.images.get()
    page = alice.get(reverse("web:task", kwargs={"task_id": task.public_id}))
    html = page.content.decode()
    assert page.status_code == HTTPStatus.OK
    assert "Completed" in html and "100 %" in html
    assert reverse("web:image", kwargs={"image_id": image.public_id}) in html
    assert image.file.url in html  # the image itself, large, not its thumbnail
    assert reverse("web:image-download", kwargs={"image_id": image.public_id}) in html
    assert worker.name in html
    assert html.count(worker.name) == 1  # once, under "Worker" (not again in the settings or the status line)
    assert "Cancel task" not in html


@pytest.mark.parametrize(
    ("code", "sentence"),
    [
        ("workflow_invalid", "ComfyUI refused the workflow"),
        ("execution_error", "ComfyUI stopped with an error"),
        ("comfyui_lost", "lost contact with ComfyUI"),
        ("worker_lost", "stopped answering"),
        ("something_new", "The task failed."),
    ],
)
def test_failed_task_explains_the_error_in_plain_words(alice, user, worker, code, sentence):
    from generation import services

    task = TaskFactory(owner=user)
    lease = services.task_lease_next(worker=worker)
    services.task_fail(
        worker=worker,
        task_id=task.public_id,
        lease_token=lease.attempt.lease_token,
        code=code,
        message="KSampler: CUDA out of memory",
        retryable=False,
    )
    html = alice.get(reverse("web:task", kwargs={"task_id": task.public_id})).content.decode()
    assert sentence in html
    assert "CUDA out of memory" in html  # the worker's own words, under "Details"


def test_gallery_needs_login(client, alice):
    assert client.get(reverse("web:gallery")).status_code == HTTPStatus.FOUND
    assert alice.get(reverse("web:gallery")).status_code == HTTPStatus.OK


def test_image_page_owner_staff_and_others(alice, bob, client_for, staff, user, worker):
    image = completed(user, worker).images.get()
    url = reverse("web:image", kwargs={"image_id": image.public_id})
    page = alice.get(url)
    assert page.status_code == HTTPStatus.OK
    html = page.content.decode()
    for text in (
        "a lighthouse at dusk",
        str(image.task.seed),
        "64 × 64",
        "sim-v1-5.safetensors",
        worker.name,
    ):
        assert text in html
    assert 'alt="a lighthouse at dusk"' in html
    assert client_for(staff).get(url).status_code == HTTPStatus.OK
    assert bob.get(url).status_code == HTTPStatus.NOT_FOUND
    assert client_for(None).get(url).status_code == HTTPStatus.NOT_FOUND
    assert alice.get(reverse("web:image", kwargs={"image_id": uuid.uuid4()})).status_code == 404


def test_image_download_is_the_original_as_attachment(alice, bob, user, worker):
    image = completed(user, worker).images.get()
    url = reverse("web:image-download", kwargs={"image_id": image.public_id})
    response = alice.get(url)
    assert response.status_code == HTTPStatus.OK
    assert response["Content-Disposition"] == f'attachment; filename="{image.task.public_id}_0.png"'
    assert b"".join(response.streaming_content) == image.file.open("rb").read()
    assert bob.get(url).status_code == HTTPStatus.NOT_FOUND


def test_queue_page_lists_queued_and_running_tasks_only(client, alice, user, worker):
    done = completed(user, worker, prompt="finished already")
    running = TaskFactory(owner=user, prompt="running now")
    from generation import services

    services.task_lease_next(worker=worker)
    queued = TaskFactory(owner=user, prompt="waiting in line")
    page = alice.get(reverse("web:queue"))
    html = page.content.decode()
    assert page.status_code == HTTPStatus.OK
    assert "running now" in html and "waiting in line" in html
    assert "finished already" not in html
    assert html.index("running now") < html.index("waiting in line")
    assert reverse("web:task-cancel", kwargs={"task_id": queued.public_id}) in html
    assert reverse("web:task-cancel", kwargs={"task_id": running.public_id}) in html
    assert done.public_id
    assert client.get(reverse("web:queue")).status_code == HTTPStatus.FOUND


def test_legacy_page_renders_with_the_seed_endpoints(client, alice):
    page = client.get(reverse("web:legacy"))
    assert page.status_code == HTTPStatus.OK
    html = page.content.decode()
    assert 'data-generate-url="/generate"' in html
    assert 'data-status-url="/status/PROMPT_ID"' in html
    assert "csrfmiddlewaretoken" in html
    assert "Log in</a> to generate" in html
    assert "Log in</a> to generate" not in alice.get(reverse("web:legacy")).content.decode()


def test_static_files_are_local(alice):
    html = alice.get(reverse("web:generate")).content.decode()
    assert "/static/css/site.css" in html
    assert "http://" not in html.replace("http://testserver", "")
    assert "https://" not in html


def test_console_link_in_the_navigation_for_staff_only(alice, client_for, staff):
    console = f'href="{reverse("admin:index")}"'
    assert console in client_for(staff).get(reverse("web:gallery")).content.decode()
    assert console not in alice.get(reverse("web:gallery")).content.decode()


def test_started_task_says_which_worker_it_waits_for(alice, user, worker):
    task = TaskFactory(owner=user)
    services.task_lease_next(worker=worker)
    html = alice.get(reverse("web:task", kwargs={"task_id": task.public_id})).content.decode()
    assert f"Waiting for {worker.name}" in html and ">Starting<" in html
    assert "Leased" not in html and "Handed to" not in html


def test_image_page_is_titled_by_its_prompt(alice, user, worker):
    image = completed(user, worker, prompt="a red fox in fresh snow").images.get()
    html = alice.get(reverse("web:image", kwargs={"image_id": image.public_id})).content.decode()
    assert "<title>a red fox in fresh snow · Render farm</title>" in html
    assert '<h1 class="prompt-title image-title">a red fox in fresh snow</h1>' in html


def test_checkpoint_names_break_only_at_their_separators():
    assert name_breaks("v1-5-pruned_emaonly.safetensors") == (
        "v1-<wbr>5-<wbr>pruned_<wbr>emaonly<wbr>.safetensors"
    )
    assert name_breaks("<b>.ckpt") == "&lt;b&gt;<wbr>.ckpt"  # escaped first
