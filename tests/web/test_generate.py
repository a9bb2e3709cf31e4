"""The generate form: submitting, field errors from the form and from the service, prefilling."""

import re
from http import HTTPStatus

import pytest
from django.urls import reverse

from generation.models import Task
from tests.conftest import CHECKPOINT
from tests.factories import TaskFactory

pytestmark = pytest.mark.django_db


def form_data(**overrides) -> dict:
    return {
        "prompt": "a red fox in the snow",
        "negative_prompt": "blurry",
        "size": "512x768",
        "width": "",
        "height": "",
        "steps": "12",
        "cfg": "6.5",
        "seed": "",
        "sampler": "euler",
        "scheduler": "normal",
        "checkpoint": "",
        "template": "sd15-txt2img",
        "batch_size": "2",
    } | overrides


def test_submit_queues_a_task_and_redirects_to_it(alice, user, worker):
    response = alice.post(reverse("web:generate"), form_data(checkpoint=CHECKPOINT))
    task = Task.objects.get()
    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"] == reverse("web:task", kwargs={"task_id": task.public_id})
    assert (task.owner, task.prompt, task.negative_prompt) == (user, "a red fox in the snow", "blurry")
    assert (task.width, task.height, task.steps, task.cfg, task.batch_size) == (512, 768, 12, 6.5, 2)
    assert task.checkpoint == CHECKPOINT and task.status == Task.Status.QUEUED
    assert 0 <= task.seed < 2**64  # blank seed: a random one


def test_custom_size_and_fixed_seed(alice, worker):
    response = alice.post(
        reverse("web:generate"), form_data(size="custom", width="640", height="384", seed=str(2**64 - 1))
    )
    assert response.status_code == HTTPStatus.FOUND
    task = Task.objects.get()
    assert (task.width, task.height, task.seed) == (640, 384, 2**64 - 1)


def test_form_errors_are_shown_next_to_their_fields(alice):
    response = alice.post(reverse("web:generate"), form_data(prompt="", steps="many", size="custom"))
    assert response.status_code == HTTPStatus.OK
    form = response.context["form"]
    assert form.errors["prompt"] == ["This field is required."]
    assert form.errors["steps"] == ["Enter a whole number."]
    assert form.errors["width"] == ["Enter a size for a custom image."]
    html = response.content.decode()
    assert 'aria-invalid="true"' in html and "Please correct the" in html
    assert not Task.objects.exists()


def test_service_rules_come_back_as_field_errors(alice, settings):
    steps_max = settings.T2I["STEPS_MAX"]
    response = alice.post(
        reverse("web:generate"),
        form_data(size="custom", width="100", height="512", steps=str(steps_max + 1), batch_size="0"),
    )
    assert response.status_code == HTTPStatus.OK
    errors = response.context["form"].errors
    assert errors["width"] == ["Must be a multiple of 8 from 64 to 2048."]
    assert errors["steps"] == [f"Must be from 1 to {steps_max}."]
    assert errors["batch_size"] == [f"Must be from 1 to {settings.T2I['BATCH_MAX']}."]
    assert "height" not in errors
    assert not Task.objects.exists()


def test_preset_size_errors_land_on_the_size_picker(alice, settings):
    settings.T2I = {**settings.T2I, "SIZE_MAX": 768}
    response = alice.post(reverse("web:generate"), form_data(size="1024x1024"))
    errors = response.context["form"].errors
    assert errors["size"] == ["Must be a multiple of 8 from 64 to 768."] * 2  # width and height
    assert not Task.objects.exists()


def test_unknown_checkpoint_is_refused_on_its_field(alice, worker):
    response = alice.post(reverse("web:generate"), form_data(checkpoint="nope.safetensors"))
    assert response.status_code == HTTPStatus.OK
    assert "checkpoint" in response.context["form"].errors
    assert not Task.objects.exists()


def test_checkpoints_offered_are_those_workers_have(alice, worker):
    html = alice.get(reverse("web:generate")).content.decode()
    assert f'<option value="{CHECKPOINT}">{CHECKPOINT} (1 worker online)</option>' in html


def test_prefill_from_query_string(alice, user):
    task = TaskFactory(owner=user, prompt="a castle", width=768, height=512, steps=9, seed=42)
    task_page = alice.get(reverse("web:task", kwargs={"task_id": task.public_id}))
    again, new_seed = task_page.context["again_query"], task_page.context["new_seed_query"]
    assert "seed=42" in again and "seed" not in new_seed
    form = alice.get(reverse("web:generate") + "?" + again).context["form"]
    assert form.initial["prompt"] == "a castle"
    assert form.initial["size"] == "768x512"
    assert form.initial["seed"] == "42" and form.initial["steps"] == "9"
    html = alice.get(reverse("web:generate") + "?" + new_seed).content.decode()
    assert "a castle</textarea>" in html
    assert re.search(r'<input type="radio" name="size" value="768x512"[^>]* checked', html)


def test_prefill_with_an_odd_size_picks_custom(alice):
    form = alice.get(reverse("web:generate") + "?width=640&height=320").context["form"]
    assert form.initial["size"] == "custom"


def test_anonymous_submit_when_allowed(client, settings, worker):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    response = client.post(reverse("web:generate"), form_data())
    assert response.status_code == HTTPStatus.FOUND
    assert Task.objects.get().owner is None


def test_anonymous_submit_refused_by_default(client):
    response = client.post(reverse("web:generate"), form_data())
    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"].startswith(reverse("web:login"))
    assert not Task.objects.exists()
