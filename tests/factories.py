"""Test data made straight in the database (factory_boy), for tests about what happens to a row once it
exists: pages, admin, authorisation, the worker API's answers.

A test about submitting, leasing or dispatch (what `task_submit` decides: template, checkpoint, seed, the
wake-up of waiting leases) queues its tasks with `tests.conftest.submit_task` instead."""

import factory
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone
from factory.django import DjangoModelFactory, Password

from generation.models import Task, WorkflowTemplate
from generation.workflows import SHIPPED_TEMPLATES
from workers_app.models import Worker, hash_token, new_token

SHIPPED = {name: rest for name, *rest in SHIPPED_TEMPLATES}
DEFAULT_TEMPLATE = "sd15-txt2img"
CHECKPOINT = "sim-v1-5.safetensors"  # the one tests.conftest.capabilities() lists


def registered_capabilities(caps: dict) -> dict:
    """`caps` as `worker_register` stores them: every list sorted, without duplicates."""
    return {key: sorted(set(value)) if isinstance(value, list) else value for key, value in caps.items()}


class UserFactory(DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user-{n}")
    password = Password("pw-test-123")


class WorkerFactory(DjangoModelFactory):
    """A registered, idle worker whose capabilities are `tests.conftest.capabilities()`. The token is a
    parameter: `worker_with_token()` returns it beside the row; only its hash is stored."""

    class Meta:
        model = Worker

    class Params:
        token = factory.LazyFunction(new_token)
        unregistered = factory.Trait(
            status=Worker.Status.OFFLINE, capabilities={}, registered_at=None, last_heartbeat=None
        )

    name = factory.Sequence(lambda n: f"worker-{n}")
    token_hash = factory.LazyAttribute(lambda o: hash_token(o.token))
    token_hint = factory.LazyAttribute(lambda o: o.token[:4])
    status = Worker.Status.IDLE
    capabilities = factory.LazyFunction(lambda: registered_capabilities(_default_capabilities()))
    registered_at = factory.LazyFunction(timezone.now)
    last_heartbeat = factory.SelfAttribute("registered_at")


def _default_capabilities() -> dict:
    from tests.conftest import capabilities  # tests.conftest imports this module

    return capabilities()


def api_token_for(user, **fields) -> str:
    """A new API token of `user` (generation.services.api_token_create): the token itself, to send."""
    from generation.services import api_token_create

    return api_token_create(user=user, **fields)[1]


def worker_with_token(**fields) -> tuple[Worker, str]:
    token = new_token()
    return WorkerFactory(token=token, **fields), token


class WorkflowTemplateFactory(DjangoModelFactory):
    """A shipped template by name (the autouse fixture has made them), or a new one with the default
    template's graph."""

    class Meta:
        model = WorkflowTemplate
        django_get_or_create = ("name",)

    name = DEFAULT_TEMPLATE
    description = factory.LazyAttribute(lambda o: SHIPPED.get(o.name, SHIPPED[DEFAULT_TEMPLATE])[0])
    workflow = factory.LazyAttribute(lambda o: SHIPPED.get(o.name, SHIPPED[DEFAULT_TEMPLATE])[1])
    bindings = factory.LazyAttribute(lambda o: SHIPPED.get(o.name, SHIPPED[DEFAULT_TEMPLATE])[2])


class TaskFactory(DjangoModelFactory):
    """A queued 64x64 task on the default template, with a checkpoint the factory's workers have."""

    class Meta:
        model = Task

    owner = None
    prompt = "a lighthouse at dusk"
    width = 64
    height = 64
    steps = 4
    seed = factory.Sequence(lambda n: n)
    template = factory.SubFactory(WorkflowTemplateFactory)
    checkpoint = factory.LazyAttribute(lambda o: CHECKPOINT if o.template.binds("checkpoint") else "")
    status = Task.Status.QUEUED
    max_attempts = factory.LazyFunction(lambda: settings.T2I["MAX_ATTEMPTS"])
