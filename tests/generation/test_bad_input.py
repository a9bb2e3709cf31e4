"""Bad input on every endpoint: each case gets a 4xx JSON error {"error", "detail", "fields"} naming the
field where there is one, and leaves the database and MEDIA_ROOT exactly as they were."""

import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from generation import services
from generation.models import Image, Task, TaskAttempt, WorkflowTemplate
from generation.workflows import NOISE_TEST_BINDINGS, NOISE_TEST_WORKFLOW
from tests.conftest import media_files, png_bytes, submit_task
from workers_app.models import Worker

pytestmark = pytest.mark.django_db

TOO_BIG = settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1
SUBMIT = "/api/v1/tasks/"
TEMPLATES = "/api/v1/templates/"
W = "/api/v1/worker/"
TASK = W + "tasks/{task_id}/"


@dataclass(frozen=True)
class Raw:
    """A body sent byte for byte as application/json (malformed JSON, NaN literals, lone surrogates)."""

    text: str | bytes


@dataclass(frozen=True)
class Multipart:
    fields: dict


def upload(data: bytes, name: str = "out_00001_.png") -> Callable[[], SimpleUploadedFile]:
    return lambda: SimpleUploadedFile(name, data, "image/png")


def png_claiming_size(width: int, height: int) -> bytes:
    """A well-formed PNG header announcing a huge image over a few bytes of data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def gif_bytes(width: int = 64, height: int = 64) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), (0, 0, 0)).save(out, format="GIF")
    return out.getvalue()


PNG = png_bytes(64, 64)
GOOD_IMAGE = upload(PNG)
NOT_AN_IMAGE = upload(b"this is a text file, not a picture\n" * 10)
TRUNCATED_PNG = upload(PNG[: len(PNG) // 2])
WRONG_SIZE = upload(png_bytes(32, 64))
BOMB = upload(png_claiming_size(100_000, 100_000))
GIF = upload(gif_bytes(), "out.gif")
EMPTY_FILE = upload(b"")

VALID_TASK = {"prompt": "a red fox in snow", "width": 64, "height": 64}


def task(**changes) -> dict:
    body = VALID_TASK | changes
    return {k: v for k, v in body.items() if v is not ...}


def big_json(field: str = "prompt") -> Callable[[], Raw]:
    return lambda: Raw(json.dumps({field: "x" * TOO_BIG}))


@dataclass(frozen=True)
class Case:
    who: str  # the client fixture: api (a user), staff_api, wapi (the worker holding the lease), anon
    path: str
    body: Any
    status: int = HTTPStatus.BAD_REQUEST
    error: str | None = "invalid"
    field: str | None = None
    method: str = "post"


def cases() -> list:
    table: dict[str, Case] = {}

    def add(name: str, *args, **kwargs) -> None:
        assert name not in table, name
        table[name] = Case(*args, **kwargs)

    def common(prefix: str, who: str, path: str, *, object_body: Any = None) -> None:
        """What every JSON endpoint must refuse: broken JSON, a list or a string, too big, wrong type."""
        add(f"{prefix}-malformed-json", who, path, Raw('{"prompt": "a", '), error="parse_error")
        add(f"{prefix}-nan-literal", who, path, Raw('{"value": NaN}'), error="parse_error")
        add(f"{prefix}-not-utf8", who, path, Raw(b'{"prompt": "\xff\xfe"}'), error="parse_error")
        add(f"{prefix}-deeply-nested", who, path, Raw("[" * 100_000), error="parse_error")
        add(f"{prefix}-list-not-object", who, path, [object_body or {}], field="non_field_errors")
        add(f"{prefix}-string-not-object", who, path, "just a string", field="non_field_errors")
        add(f"{prefix}-oversized", who, path, big_json(), status=413, error="request_too_large")
        add(f"{prefix}-form-encoded", who, path, "FORM", status=415, error="unsupported_media_type")

    # --- REST submit and the seed's POST /generate (same input, same rules) ---
    for prefix, path in (("submit", SUBMIT), ("generate", "/generate")):
        common(prefix, "api", path, object_body=VALID_TASK)
        add(f"{prefix}-prompt-missing", "api", path, task(prompt=...), field="prompt")
        add(f"{prefix}-prompt-null", "api", path, task(prompt=None), field="prompt")
        add(f"{prefix}-prompt-list", "api", path, task(prompt=["a", "b"]), field="prompt")
        add(f"{prefix}-prompt-object", "api", path, task(prompt={"text": "a"}), field="prompt")
        add(f"{prefix}-prompt-empty", "api", path, task(prompt=""), field="prompt")
        add(f"{prefix}-prompt-blank", "api", path, task(prompt=" \n\t "), field="prompt")
        add(f"{prefix}-prompt-too-long", "api", path, task(prompt="x" * 4001), field="prompt")
        add(f"{prefix}-prompt-bell", "api", path, task(prompt="ring \x07 ring"), field="prompt")
        add(f"{prefix}-prompt-nul", "api", path, task(prompt="a\x00b"), field="prompt")
        add(f"{prefix}-prompt-escape", "api", path, task(prompt="\x1b[31mred"), field="prompt")
        add(f"{prefix}-prompt-delete", "api", path, task(prompt="a\x7fb"), field="prompt")
        add(
            f"{prefix}-prompt-lone-surrogate",
            "api",
            path,
            Raw('{"prompt": "a \\ud800 b", "width": 64, "height": 64}'),
            field="prompt",
        )
        add(f"{prefix}-negative-control", "api", path, task(negative_prompt="\x00"), field="negative_prompt")
        add(f"{prefix}-height-negative", "api", path, task(height=-8), field="height")
        add(f"{prefix}-width-text", "api", path, task(width="wide"), field="width")
        add(f"{prefix}-width-negative", "api", path, task(width=-64), field="width")
        add(f"{prefix}-width-zero", "api", path, task(width=0), field="width")
        add(f"{prefix}-width-huge", "api", path, task(width=10**30), field="width")
        add(f"{prefix}-width-nan", "api", path, task(width="NaN"), field="width")
        add(f"{prefix}-width-infinity", "api", path, task(width="Infinity"), field="width")
        add(f"{prefix}-width-not-multiple", "api", path, task(width=100), field="width")
        add(f"{prefix}-width-too-big", "api", path, task(width=4096), field="width")
        add(f"{prefix}-width-too-small", "api", path, task(width=8), field="width")
        add(f"{prefix}-width-fraction", "api", path, task(width=63.5), field="width")
        add(f"{prefix}-width-bool", "api", path, task(width=True), field="width")
        add(f"{prefix}-height-null", "api", path, task(height=None), field="height")
        add(f"{prefix}-height-list", "api", path, task(height=[64]), field="height")
        if prefix == "generate":
            continue  # the rest are the same serializer and service as the REST submit
        add("submit-steps-zero", "api", path, task(steps=0), field="steps")
        add("submit-steps-huge", "api", path, task(steps=10**30), field="steps")
        add("submit-steps-text", "api", path, task(steps="many"), field="steps")
        add("submit-cfg-nan", "api", path, task(cfg="NaN"), field="cfg")
        add("submit-cfg-infinity", "api", path, task(cfg="-Infinity"), field="cfg")
        add("submit-cfg-overflow", "api", path, Raw('{"prompt": "a", "cfg": 1e400}'), field="cfg")
        add("submit-cfg-negative", "api", path, task(cfg=-1), field="cfg")
        add("submit-cfg-huge", "api", path, task(cfg=10**30), field="cfg")
        add("submit-seed-2-64", "api", path, task(seed=2**64), field="seed")
        add("submit-seed-huge", "api", path, task(seed=10**30), field="seed")
        add("submit-seed-negative", "api", path, task(seed=-1), field="seed")
        add("submit-seed-fraction", "api", path, task(seed=1.5), field="seed")
        add("submit-seed-float-exponent", "api", path, task(seed=1e20), field="seed")
        add("submit-seed-nan", "api", path, task(seed="NaN"), field="seed")
        add("submit-seed-text", "api", path, task(seed="lucky"), field="seed")
        add("submit-batch-zero", "api", path, task(batch_size=0), field="batch_size")
        add("submit-batch-too-big", "api", path, task(batch_size=9), field="batch_size")
        add("submit-priority-huge", "api", path, task(priority=10**30), field="priority")
        add("submit-priority-negative", "api", path, task(priority=-5000), field="priority")
        add("submit-sampler-too-long", "api", path, task(sampler="s" * 65), field="sampler")
        add("submit-sampler-list", "api", path, task(sampler=["euler"]), field="sampler")
        add("submit-scheduler-nul", "api", path, task(scheduler="nor\x00mal"), field="scheduler")
        add("submit-checkpoint-list", "api", path, task(checkpoint=["a"]), field="checkpoint")
        add(
            "submit-checkpoint-unknown",
            "api",
            path,
            task(checkpoint="nobody-has-this.safetensors"),
            error="no_capable_worker",
            field="checkpoint",
        )
        add(
            "submit-template-unknown",
            "api",
            path,
            task(template="nope"),
            error="unknown_template",
            field="template",
        )
        add("submit-template-too-long", "api", path, task(template="t" * 101), field="template")
        add("submit-empty-body", "api", path, Raw(""), field="prompt")
    add("generate-seed-2-64", "api", "/generate", task(seed=2**64), field="seed")
    add(
        "generate-template-unknown",
        "api",
        "/generate",
        task(template="nope"),
        error="unknown_template",
        field="template",
    )

    # --- Template create (staff) ---
    tpl = {"name": "my-template", "workflow": NOISE_TEST_WORKFLOW, "bindings": NOISE_TEST_BINDINGS}

    def template(**changes) -> dict:
        return {k: v for k, v in (tpl | changes).items() if v is not ...}

    common("template", "staff_api", TEMPLATES, object_body=tpl)
    add("template-name-missing", "staff_api", TEMPLATES, template(name=...), field="name")
    add("template-name-spaces", "staff_api", TEMPLATES, template(name="has spaces"), field="name")
    add("template-name-too-long", "staff_api", TEMPLATES, template(name="n" * 101), field="name")
    add("template-name-taken", "staff_api", TEMPLATES, template(name="noise-test"), field="name")
    add("template-workflow-missing", "staff_api", TEMPLATES, template(workflow=...), field="workflow")
    add("template-workflow-string", "staff_api", TEMPLATES, template(workflow="SaveImage"), field="workflow")
    add("template-workflow-list", "staff_api", TEMPLATES, template(workflow=[1, 2]), field="workflow")
    add(
        "template-bindings-list",
        "staff_api",
        TEMPLATES,
        template(bindings=[["1", "width"]]),
        field="bindings",
    )
    add("template-description-list", "staff_api", TEMPLATES, template(description=["x"]), field="description")
    nul_workflow = {**NOISE_TEST_WORKFLOW, "9": {"class_type": "Note", "inputs": {"text": "a\x00b"}}}
    add("template-workflow-nul", "staff_api", TEMPLATES, template(workflow=nul_workflow), field="workflow")
    surrogate = json.dumps(
        template(workflow={**NOISE_TEST_WORKFLOW, "9": {"class_type": "Note", "inputs": {}}})
    )
    surrogate = surrogate.replace('"Note"', '"No\\udc00te"')
    add("template-workflow-lone-surrogate", "staff_api", TEMPLATES, Raw(surrogate), field="workflow")
    deep: Any = "leaf"
    for _ in range(200):
        deep = [deep]
    deep_workflow = {**NOISE_TEST_WORKFLOW, "9": {"class_type": "Note", "inputs": {"text": deep}}}
    add("template-workflow-deep", "staff_api", TEMPLATES, template(workflow=deep_workflow), field="workflow")
    infinite = json.dumps(template()).replace('"strength": 0.5', '"strength": 1e400')
    add("template-workflow-infinite-number", "staff_api", TEMPLATES, Raw(infinite), field="workflow")

    # --- Worker: register (and the seed's /register) ---
    for prefix, path in (("register", W + "register"), ("seed-register", "/register")):
        common(prefix, "wapi", path)
        add(f"{prefix}-prefetch-zero", "wapi", path, {"prefetch": 0}, field="prefetch")
        add(f"{prefix}-prefetch-huge", "wapi", path, {"prefetch": 10**30}, field="prefetch")
        add(f"{prefix}-prefetch-text", "wapi", path, {"prefetch": "two"}, field="prefetch")
        add(f"{prefix}-capabilities-string", "wapi", path, {"capabilities": "gpu"}, field="capabilities")
        add(
            f"{prefix}-checkpoints-string",
            "wapi",
            path,
            {"capabilities": {"checkpoints": "a.safetensors"}},
            field="capabilities.checkpoints",
        )
        add(
            f"{prefix}-checkpoints-nested",
            "wapi",
            path,
            {"capabilities": {"checkpoints": [["a"]]}},
            field="capabilities.checkpoints",
        )
        add(
            f"{prefix}-node-class-nul",
            "wapi",
            path,
            {"capabilities": {"node_classes": ["Save\x00Image"]}},
            field="capabilities.node_classes",
        )
        add(
            f"{prefix}-vram-negative",
            "wapi",
            path,
            {"capabilities": {"vram_total": -1}},
            field="capabilities.vram_total",
        )
        add(
            f"{prefix}-vram-huge",
            "wapi",
            path,
            {"capabilities": {"vram_total": 10**30}},
            field="capabilities.vram_total",
        )
        add(f"{prefix}-name-too-long", "wapi", path, {"name": "n" * 101}, field="name")

    # --- Worker: heartbeat (and /heartbeat) ---
    for prefix, path in (("heartbeat", W + "heartbeat"), ("seed-heartbeat", "/heartbeat")):
        common(prefix, "wapi", path)
        add(f"{prefix}-tasks-string", "wapi", path, {"tasks": "all"}, field="tasks")
        add(f"{prefix}-tasks-numbers", "wapi", path, {"tasks": [1, 2]}, field="tasks")
        add(
            f"{prefix}-task-id-bad",
            "wapi",
            path,
            {"tasks": [{"task_id": "nope", "lease_token": "{token}"}]},
            field="tasks",
        )
        add(
            f"{prefix}-lease-token-missing",
            "wapi",
            path,
            {"tasks": [{"task_id": "{task_id}"}]},
            field="tasks",
        )

    # --- Worker: lease (and /task) ---
    for prefix, path in (("lease", W + "lease"), ("seed-task", "/task")):
        common(prefix, "wapi", path)
        add(f"{prefix}-wait-negative", "wapi", path, {"wait": -1}, field="wait")
        add(f"{prefix}-wait-nan", "wapi", path, {"wait": "NaN"}, field="wait")
        add(f"{prefix}-wait-infinity", "wapi", path, {"wait": "Infinity"}, field="wait")
        add(f"{prefix}-wait-text", "wapi", path, {"wait": "soon"}, field="wait")
        add(f"{prefix}-wait-query-text", "wapi", path + "?wait=soon", {}, field="wait")
        add(f"{prefix}-prefetch-text", "wapi", path, {"prefetch": "maybe"}, field="prefetch")

    # --- Worker: start, progress, fail, release ---
    token = {"lease_token": "{token}"}
    for name, extra in (
        ("start", {}),
        ("progress", {"value": 1, "max": 4}),
        ("fail", {"code": "internal", "message": "boom", "retryable": False}),
        ("release", {}),
    ):
        path = TASK + name
        common(name, "wapi", path, object_body=token | extra)
        add(f"{name}-token-missing", "wapi", path, extra, field="lease_token")
        add(f"{name}-token-not-uuid", "wapi", path, extra | {"lease_token": "abc"}, field="lease_token")
        add(f"{name}-token-negative", "wapi", path, extra | {"lease_token": -1}, field="lease_token")
        add(f"{name}-token-huge", "wapi", path, extra | {"lease_token": 2**128}, field="lease_token")
    add(
        "start-prompt-id-too-long",
        "wapi",
        TASK + "start",
        token | {"comfyui_prompt_id": "p" * 65},
        field="comfyui_prompt_id",
    )
    progress = TASK + "progress"
    add("progress-value-missing", "wapi", progress, token | {"max": 4}, field="value")
    add("progress-value-negative", "wapi", progress, token | {"value": -1, "max": 4}, field="value")
    add("progress-value-above-max", "wapi", progress, token | {"value": 5, "max": 4}, field="value")
    add("progress-value-huge", "wapi", progress, token | {"value": 10**30, "max": 4}, field="value")
    add("progress-value-nan", "wapi", progress, token | {"value": "NaN", "max": 4}, field="value")
    add("progress-max-infinity", "wapi", progress, token | {"value": 1, "max": "Infinity"}, field="max")
    add("progress-max-zero", "wapi", progress, token | {"value": 0, "max": 0}, field="max")
    add("progress-max-text", "wapi", progress, token | {"value": 1, "max": "four"}, field="max")
    fail = TASK + "fail"
    failure = token | {"code": "internal", "message": "boom", "retryable": False}
    add("fail-code-missing", "wapi", fail, failure | {"code": ...}, field="code")
    add("fail-code-bad", "wapi", fail, failure | {"code": "Bad Code!"}, field="code")
    add("fail-code-too-long", "wapi", fail, failure | {"code": "c" * 65}, field="code")
    add("fail-message-missing", "wapi", fail, failure | {"message": ...}, field="message")
    add("fail-message-too-long", "wapi", fail, failure | {"message": "m" * 4001}, field="message")
    add("fail-message-nul", "wapi", fail, failure | {"message": "a\x00b"}, field="message")
    add("fail-retryable-text", "wapi", fail, failure | {"retryable": "maybe"}, field="retryable")
    add("fail-details-string", "wapi", fail, failure | {"details": "node 4"}, field="details")

    # --- Worker: complete (multipart) ---
    complete = TASK + "complete"
    images = {"lease_token": "{token}", "images": [GOOD_IMAGE]}
    add("complete-token-missing", "wapi", complete, Multipart({"images": [GOOD_IMAGE]}), field="lease_token")
    add(
        "complete-token-bad",
        "wapi",
        complete,
        Multipart(images | {"lease_token": "abc"}),
        field="lease_token",
    )
    add("complete-images-missing", "wapi", complete, Multipart({"lease_token": "{token}"}), field="images")
    add(
        "complete-images-text-field",
        "wapi",
        complete,
        Multipart(images | {"images": "a.png"}),
        field="images",
    )
    add(
        "complete-not-an-image",
        "wapi",
        complete,
        Multipart(images | {"images": [NOT_AN_IMAGE]}),
        field="images",
    )
    add(
        "complete-truncated-png",
        "wapi",
        complete,
        Multipart(images | {"images": [TRUNCATED_PNG]}),
        field="images",
    )
    add("complete-wrong-size", "wapi", complete, Multipart(images | {"images": [WRONG_SIZE]}), field="images")
    add(
        "complete-wrong-count",
        "wapi",
        complete,
        Multipart(images | {"images": [GOOD_IMAGE, GOOD_IMAGE]}),
        field="images",
    )
    add(
        "complete-decompression-bomb",
        "wapi",
        complete,
        Multipart(images | {"images": [BOMB]}),
        field="images",
    )
    add("complete-gif", "wapi", complete, Multipart(images | {"images": [GIF]}), field="images")
    add("complete-empty-file", "wapi", complete, Multipart(images | {"images": [EMPTY_FILE]}), field="images")
    add(
        "complete-prompt-id-too-long",
        "wapi",
        complete,
        Multipart(images | {"comfyui_prompt_id": "p" * 65}),
        field="comfyui_prompt_id",
    )
    add(
        "complete-lease-next-bad",
        "wapi",
        complete,
        Multipart(images | {"lease_next": "maybe"}),
        field="lease_next",
    )
    add("complete-prefetch-bad", "wapi", complete, Multipart(images | {"prefetch": "2"}), field="prefetch")
    add(
        "complete-oversized",
        "wapi",
        complete,
        Multipart(images | {"comfyui_prompt_id": "p" * TOO_BIG}),
        status=413,
        error="request_too_large",
    )
    add("complete-json-body", "wapi", complete, token, status=415, error="unsupported_media_type")

    # --- Seed: /complete ---
    seed = {"prompt_id": "{task_id}", "images": [GOOD_IMAGE]}
    add(
        "seed-complete-prompt-id-missing",
        "wapi",
        "/complete",
        Multipart({"images": [GOOD_IMAGE]}),
        field="prompt_id",
    )
    add(
        "seed-complete-prompt-id-bad",
        "wapi",
        "/complete",
        Multipart(seed | {"prompt_id": "abc"}),
        field="prompt_id",
    )
    add("seed-complete-prompt-id-number", "wapi", "/complete", {"prompt_id": 12}, field="prompt_id")
    add("seed-complete-prompt-id-object", "wapi", "/complete", {"prompt_id": {"id": 1}}, field="prompt_id")
    add(
        "seed-complete-token-bad",
        "wapi",
        "/complete",
        Multipart(seed | {"lease_token": "abc"}),
        field="lease_token",
    )
    add("seed-complete-no-images", "wapi", "/complete", {"prompt_id": "{task_id}"}, field="images")
    add(
        "seed-complete-not-an-image",
        "wapi",
        "/complete",
        Multipart(seed | {"images": [NOT_AN_IMAGE]}),
        field="images",
    )
    add(
        "seed-complete-wrong-size",
        "wapi",
        "/complete",
        Multipart(seed | {"images": [WRONG_SIZE]}),
        field="images",
    )
    add("seed-complete-bomb", "wapi", "/complete", Multipart(seed | {"images": [BOMB]}), field="images")
    add("seed-complete-malformed-json", "wapi", "/complete", Raw('{"prompt_id": '), error="parse_error")
    add(
        "seed-complete-list-not-object",
        "wapi",
        "/complete",
        [{"prompt_id": "{task_id}"}],
        field="non_field_errors",
    )
    add(
        "seed-complete-oversized",
        "wapi",
        "/complete",
        big_json("prompt_id"),
        status=413,
        error="request_too_large",
    )

    # --- Seed: GET /status/<id> ---
    for name, ident in (
        ("garbage", "not-a-uuid"),
        ("long", "x" * 1000),
        ("nul", "%00"),
        ("unknown", "0" * 32),
    ):
        add(f"status-{name}", "api", f"/status/{ident}", None, status=404, error="not_found", method="get")

    return [pytest.param(case, id=name) for name, case in table.items()]


def fill(value: Any, ctx: dict) -> Any:
    """Put the leased task's id and token into a body, and make fresh upload objects."""
    if callable(value):
        return fill(value(), ctx)
    if isinstance(value, str):
        return value.replace("{task_id}", ctx["task_id"]).replace("{token}", ctx["token"])
    if isinstance(value, list):
        return [fill(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, ctx) for k, v in value.items() if v is not ...}
    if isinstance(value, Multipart):
        return Multipart(fill(value.fields, ctx))
    if isinstance(value, Raw) and isinstance(value.text, str):
        return Raw(fill(value.text, ctx))
    return value


def send(client, case: Case, ctx: dict):
    path = fill(case.path, ctx)
    if case.method == "get":
        return client.get(path)
    body = fill(case.body, ctx)
    if body == "FORM":
        return client.post(path, "a=1&b=2", content_type="application/x-www-form-urlencoded")
    if isinstance(body, Multipart):
        return client.post(path, body.fields, format="multipart")
    if isinstance(body, Raw):
        return client.post(path, body.text, content_type="application/json")
    return client.post(path, json.dumps(body, allow_nan=False), content_type="application/json")


def database_state() -> tuple:
    return (
        list(
            Task.objects.order_by("pk").values_list(
                "status", "worker_id", "lease_token", "lease_expires_at", "progress_value", "progress_max",
                "attempts", "lease_count", "error_code", "started_at", "finished_at",
            )
        ),
        list(TaskAttempt.objects.order_by("pk").values_list("outcome", "lease_expires_at", "started_at")),
        list(Worker.objects.order_by("pk").values_list("status", "last_heartbeat", "capabilities")),
        list(WorkflowTemplate.objects.order_by("pk").values_list("name", "updated_at")),
        Image.objects.count(),
        media_files(),
    )  # fmt: skip


@pytest.fixture
def ctx(worker) -> dict:
    """A task leased to `worker` (the per-task endpoints' target) and another one waiting in the queue."""
    leased = submit_task(**VALID_TASK)
    lease = services.task_lease_next(worker=worker)
    assert lease.task.pk == leased.pk
    submit_task(**VALID_TASK)
    return {"task_id": str(leased.public_id), "token": str(lease.attempt.lease_token)}


@pytest.mark.parametrize("case", cases())
def test_bad_input_is_refused_and_changes_nothing(request, ctx, case: Case):
    client = request.getfixturevalue(case.who)
    before = database_state()

    response = send(client, case, ctx)

    assert response.status_code == case.status, response.content[:500]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail", "fields"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if case.error:
        assert body["error"] == case.error, body
    if case.field:
        assert any(name == case.field or name.startswith(f"{case.field}.") for name in body["fields"]), body
    assert database_state() == before


# --- What must be accepted --------------------------------------------------------------------------------


def test_seed_at_the_top_of_the_range_is_accepted_and_kept_exactly(api, worker):
    top = 2**64 - 1

    rest = api.post(SUBMIT, task(seed=top), format="json")
    seed = api.post("/generate", task(seed=top), format="json")

    assert rest.status_code == HTTPStatus.CREATED and rest.json()["seed"] == str(top)
    assert seed.status_code == HTTPStatus.OK
    assert sorted(Task.objects.values_list("seed", flat=True)) == [top, top]
    lease = services.task_lease_next(worker=worker)
    assert lease.workflow["3"]["inputs"]["seed"] == top


@pytest.mark.parametrize(
    "prompt",
    [
        "a café in Zürich, naïve façade",
        "富士山と桜、夕暮れ",
        "منظر طبيعي للصحراء",
        "a cat 🐈‍⬛ wearing a 🎩, 4k",
        "e\u0301\u0301 combining marks and a zero\u200bwidth space",
        "multi-line\nprompt\twith tabs\r\n",
        "x" * 4000,
    ],
    ids=["latin", "japanese", "arabic", "emoji", "combining", "whitespace", "longest"],
)
def test_unicode_prompts_are_accepted_and_kept_exactly(api, worker, prompt):
    response = api.post(SUBMIT, task(prompt=prompt, negative_prompt=prompt[::-1]), format="json")

    assert response.status_code == HTTPStatus.CREATED, response.json()
    assert response.json()["prompt"] == prompt
    stored = Task.objects.get()
    assert (stored.prompt, stored.negative_prompt) == (prompt, prompt[::-1])
    lease = services.task_lease_next(worker=worker)
    assert lease.workflow["6"]["inputs"]["text"] == prompt


def test_an_image_above_the_byte_limit_is_refused(wapi, ctx, settings):
    settings.T2I = {**settings.T2I, "MAX_IMAGE_BYTES": 100}
    before = database_state()

    response = wapi.post(
        f"{W}tasks/{ctx['task_id']}/complete",
        {"lease_token": ctx["token"], "images": [GOOD_IMAGE()]},
        format="multipart",
    )

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "images" in response.json()["fields"]
    assert database_state() == before


def test_failure_details_with_odd_characters_are_stored_safely(wapi, ctx):
    details = '{"node_id": "4\\u0000", "node_type": "Check\\ud800point", "input": ["ckpt_name"]}'
    body = (
        f'{{"lease_token": "{ctx["token"]}", "code": "workflow_invalid", "message": "bad input",'
        f' "retryable": false, "details": {details}}}'
    )

    response = wapi.post(f"{W}tasks/{ctx['task_id']}/fail", body, content_type="application/json")

    assert response.status_code == HTTPStatus.OK, response.content[:300]
    task = Task.objects.get(public_id=ctx["task_id"])
    assert task.status == Task.Status.FAILED
    assert task.error_message.startswith("bad input (node_id=4")
    assert "\x00" not in task.error_message
    task.error_message.encode("utf-8")  # storable and printable as it is


def test_task_list_with_an_unknown_status_filter_is_refused(api):
    response = api.get(SUBMIT + "?status=sleeping")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["fields"] == {"status": [f"One of {', '.join(Task.Status.values)}."]}


@pytest.mark.parametrize(
    "cursor",
    [
        "cD14",  # p=x
        "cD0xZTQwMA==",  # p=1e400
        "cD05OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5",  # p=99999999999999999999999999
        "cj0xJnA9eA==",  # r=1&p=x
        "bz0tMQ==",  # o=-1
    ],
)
def test_a_crafted_list_cursor_is_a_404_with_the_usual_error(api, cursor):
    response = api.get("/api/v1/tasks/", {"cursor": cursor})
    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response.json() == {"error": "not_found", "detail": "Invalid cursor", "fields": {}}


def test_a_real_cursor_still_pages(api, user):
    for n in range(3):
        submit_task(owner=user, prompt=f"task {n}")
    first = api.get("/api/v1/tasks/", {"page_size": 2}).json()
    second = api.get(first["next"]).json()
    assert len(first["results"]) == 2 and len(second["results"]) == 1
