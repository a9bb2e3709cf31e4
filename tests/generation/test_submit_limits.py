"""POST /api/v1/tasks/: the farm's limits in the OpenAPI schema (from settings) and in the API's answers (the
service's words); sampler and scheduler checked against what online workers report, like checkpoints."""

from http import HTTPStatus

import pytest

from generation.models import Task
from generation.serializers import TaskSubmitInput
from tests.conftest import capabilities, make_worker
from workers_app.models import Worker

pytestmark = pytest.mark.django_db

SUBMIT = "/api/v1/tasks/"


def submit(api, **fields):
    return api.post(
        SUBMIT, {"prompt": "a red fox in snow", "width": 64, "height": 64} | fields, format="json"
    )


def submit_schema(api) -> dict:
    schema = api.get("/api/schema/", {"format": "json"}).json()
    return schema["components"]["schemas"]["TaskSubmitInputRequest"]["properties"]


def test_schema_shows_the_limits_of_this_farm(api, settings):
    limits = {"SIZE_MIN": 128, "SIZE_MAX": 1024, "STEPS_MAX": 50, "BATCH_MAX": 4, "PROMPT_MAX_LENGTH": 300}
    settings.T2I = {**settings.T2I, **limits}
    fields = submit_schema(api)
    assert (fields["width"]["minimum"], fields["width"]["maximum"]) == (128, 1024)
    assert "multiple of 8" in fields["height"]["description"]
    assert (fields["steps"]["minimum"], fields["steps"]["maximum"]) == (1, 50)
    assert (fields["batch_size"]["minimum"], fields["batch_size"]["maximum"]) == (1, 4)
    assert (fields["cfg"]["minimum"], fields["cfg"]["maximum"]) == (0, 100)
    assert (fields["priority"]["minimum"], fields["priority"]["maximum"]) == (-1000, 1000)
    assert fields["prompt"]["maxLength"] == fields["negative_prompt"]["maxLength"] == 300


def test_beyond_a_limit_the_api_answers_in_the_services_words(api, settings):
    response = submit(api, width=4096, steps=0, prompt="x" * (settings.T2I["PROMPT_MAX_LENGTH"] + 1))
    assert response.status_code == HTTPStatus.BAD_REQUEST
    fields = response.json()["fields"]
    assert fields["width"] == ["Must be a multiple of 8 from 64 to 2048."]
    assert fields["steps"] == [f"Must be from 1 to {settings.T2I['STEPS_MAX']}."]
    assert fields["prompt"] == [f"At most {settings.T2I['PROMPT_MAX_LENGTH']} characters."]
    assert fields["width"] == submit(api, width=100).json()["fields"]["width"]  # in range, not a multiple
    assert not Task.objects.exists()


def test_the_submit_form_follows_a_change_of_the_limits(api, settings):
    """The submit's fields are built once per set of limits: a change of settings is still seen at once."""
    assert submit(api, steps=60).status_code == HTTPStatus.CREATED
    settings.T2I = {**settings.T2I, "STEPS_MAX": 50}
    assert TaskSubmitInput().fields["steps"].max_value == 50
    assert submit(api, steps=60).json()["fields"]["steps"] == ["Must be from 1 to 50."]
    settings.T2I = {**settings.T2I, "STEPS_MAX": 80}
    assert TaskSubmitInput().fields["steps"].max_value == 80
    assert submit(api, steps=60).status_code == HTTPStatus.CREATED


@pytest.mark.parametrize(
    ("field", "known"), [("sampler", "dpmpp_2m, euler"), ("scheduler", "karras, normal")]
)
def test_an_option_no_online_worker_reports_is_refused_naming_the_field(api, field, known):
    make_worker(caps=capabilities() | {"samplers": ["euler", "dpmpp_2m"], "schedulers": ["normal", "karras"]})
    response = submit(api, **{field: "bogus"})
    assert response.status_code == HTTPStatus.BAD_REQUEST
    body = response.json()
    assert body["fields"] == {field: [f"Unknown {field} 'bogus'. Online workers have: {known}."]}
    assert not Task.objects.exists()


def test_options_that_online_workers_report_are_accepted(api):
    make_worker(caps=capabilities() | {"samplers": ["euler", "dpmpp_2m"], "schedulers": ["normal", "karras"]})
    response = submit(api, sampler="dpmpp_2m", scheduler="karras")
    assert response.status_code == HTTPStatus.CREATED, response.json()
    assert Task.objects.get().sampler == "dpmpp_2m"


def test_anything_goes_while_no_online_worker_reports_options(api):
    worker, _token = make_worker(caps=capabilities() | {"samplers": [], "schedulers": []})
    assert submit(api, sampler="my_custom_sampler").status_code == HTTPStatus.CREATED
    Worker.objects.filter(pk=worker.pk).update(capabilities=capabilities(), status=Worker.Status.OFFLINE)
    response = submit(api, sampler="another_sampler")  # only an offline worker reports samplers
    assert response.status_code == HTTPStatus.CREATED, response.json()
    assert Task.objects.count() == 2


def test_a_template_that_uses_no_sampler_ignores_it(api):
    make_worker()  # reports samplers ["euler"]
    response = submit(api, template="noise-test", sampler="bogus")
    assert response.status_code == HTTPStatus.CREATED, response.json()
