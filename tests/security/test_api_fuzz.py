"""Schemathesis against /api/schema/: every operation, without and with valid credentials.

Two properties hold for every generated request (valid and deliberately invalid ones alike):
- no 5xx;
- every 4xx body is the documented error shape `{"error": str, "detail": str, "fields": object}`.

Credentials are set per operation: the worker endpoints (`/api/v1/worker/…` and the seed's `/register`,
`/heartbeat`, `/task`, `/complete`) take the worker token (`Authorization: Bearer …`); template creation
takes a staff user's API token; everything else a plain user's API token (`Authorization: Token …`). Half
of the requests that name a task are pointed at a real one (a task this user owns, or a task leased to this
worker with its real lease token) so the fuzzer reaches the services instead of stopping at "not found".

Pagination cursors: schemathesis alone sends random strings, which DRF refuses before they reach anything.
A `flatmap_query` hook gives about half the list requests a valid-looking cursor instead: base64 of DRF's
`o=…&r=…&p=…` with offsets, directions and positions from plausible (a real task id) to hostile (`1e400`,
huge, negative, NUL, any text), so the fuzzer reaches the decoding and the query it drives.

Bounded for CI: T2I_FUZZ_EXAMPLES (default 25) per operation and credential mode, derandomized, no example
database. Raise it locally for a longer hunt: `T2I_FUZZ_EXAMPLES=300 pytest tests/security/test_api_fuzz.py`.
"""

import base64
import os
import zlib
from collections import Counter
from http import HTTPStatus

import pytest
import schemathesis
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation import services
from generation.models import InputImage, Task, WorkflowTemplate
from t2i_project.wsgi import application
from tests.conftest import capabilities, make_worker, png_bytes, submit_task
from tests.factories import api_token_for
from workers_app import services as worker_services

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("T2I_FUZZ_EXAMPLES", "25"))
SEED_WORKER_PATHS = {"/register", "/heartbeat", "/task", "/complete"}

schema = schemathesis.openapi.from_wsgi(
    "/api/schema/",
    application,
    config=schemathesis.Config.from_dict(
        {
            "generation": {
                "mode": "all",  # schema-valid and schema-violating requests
                "max-examples": EXAMPLES,
                "deterministic": True,
                "database": "none",
                "with-security-parameters": False,  # the test sets Authorization itself
            },
            "phases": {"stateful": {"enabled": False}},
        }
    ),
).exclude(
    path_regex=r"/events$"
)  # event streams answer a stream, not a document: tests/generation/test_event_streams.py


def drf_cursor(tokens: dict[str, str]) -> str:
    """A cursor as DRF's CursorPagination encodes one: base64 of a query string with o, r and p."""
    from urllib.parse import urlencode

    return base64.b64encode(urlencode(tokens).encode("ascii")).decode("ascii")


NUMBERS = st.one_of(st.integers(-5, 10**4), st.integers(-(10**30), 10**30)).map(str)
HOSTILE = st.sampled_from(["", "1e400", "x", "NaN", "-0", "\x00", "9" * 40, "1 OR 1=1", "٣"])
CURSORS = st.fixed_dictionaries(
    {},
    optional={
        "o": st.one_of(NUMBERS, HOSTILE),
        "r": st.sampled_from(["0", "1", "2", "x", ""]),
        "p": st.one_of(NUMBERS, HOSTILE, st.text(max_size=20)),
    },
).map(drf_cursor)


@schema.hook("flatmap_query")
def with_valid_looking_cursors(context, query):
    """About half the requests to an operation that takes `cursor` carry one shaped like DRF's."""
    names = {p.name for p in context.operation.query} if context.operation is not None else set()
    if "cursor" not in names:
        return st.just(query)
    return st.one_of(st.just(query), CURSORS.map(lambda cursor: {**(query or {}), "cursor": cursor}))


STATUSES: Counter = Counter()  # (operation, credentials, status) -> responses


@pytest.fixture(scope="module", autouse=True)
def _print_summary():
    """Print what the run reached (shown with -s): responses by operation, credentials and status."""
    yield
    by_operation: dict[str, Counter] = {}
    for (label, auth, status), count in STATUSES.items():
        by_operation.setdefault(f"{label} [{auth}]", Counter())[status] += count
    print(f"\nfuzz: {sum(STATUSES.values())} requests, {len(by_operation)} operation/credential pairs")
    for name in sorted(by_operation):
        codes = ", ".join(f"{code}×{n}" for code, n in sorted(by_operation[name].items()))
        print(f"  {name}: {codes}")


def is_worker_operation(path: str) -> bool:
    return path.startswith("/api/v1/worker/") or path in SEED_WORKER_PATHS


def is_staff_operation(method: str, path: str) -> bool:
    return method.upper() == "POST" and path == "/api/v1/templates/"


class Farm:
    """What the fuzzer may aim at: a user, a staff user, a worker, and tasks of theirs."""

    def __init__(self, django_user_model) -> None:
        self.user = django_user_model.objects.create_user("fuzz-user", password="pw-fuzz-123")
        self.staff = django_user_model.objects.create_user(
            "fuzz-staff", password="pw-fuzz-123", is_staff=True
        )
        self.user_token = api_token_for(self.user)
        self.staff_token = api_token_for(self.staff)
        self.worker, self.worker_token = make_worker("fuzz-gpu")

    def headers(self, auth: str, method: str, path: str) -> dict[str, str]:
        if auth == "none":
            return {}
        if is_worker_operation(path):
            return {"Authorization": f"Bearer {self.worker_token}"}
        token = self.staff_token if is_staff_operation(method, path) else self.user_token
        return {"Authorization": f"Token {token}"}

    def owned_task(self) -> Task:
        return submit_task(self.user, prompt="a lighthouse")

    def owned_upload(self) -> InputImage:
        image = SimpleUploadedFile("fuzz.png", png_bytes(8, 8), "image/png")
        return services.input_image_upload(owner=self.user, upload=image)

    def leased_task(self) -> tuple[Task, str]:
        """A fresh lease for the fuzzed worker (re-registered first: earlier examples may have sent it
        offline or replaced its capabilities)."""
        self.worker.refresh_from_db()
        worker_services.worker_register(worker=self.worker, capabilities=capabilities())
        self.owned_task()
        lease = services.task_lease_next(worker=self.worker)
        assert lease is not None
        return lease.task, str(lease.attempt.lease_token)


@pytest.fixture
def farm(django_user_model, settings):
    # Long polls would make the lease operations slow without finding anything new.
    settings.T2I = {**settings.T2I, "LEASE_MAX_WAIT": 0}
    assert WorkflowTemplate.objects.filter(name=settings.T2I["DEFAULT_TEMPLATE"]).exists()
    # The WSGI app closes "old" connections when a request starts and finishes; inside the test's transaction
    # that would close it under the test (Django's own test client disconnects the same receiver).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield Farm(django_user_model)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def aim_at_real_task(case, farm: Farm) -> None:
    """Point about half the cases that name a task at a real one, chosen from the case itself so the run
    stays deterministic."""
    params = case.path_parameters or {}
    key = next((k for k in ("task_id", "prompt_id", "upload_id") if k in params), None)
    body_names_task = case.path == "/complete" and isinstance(case.body, dict)
    if key is None and not body_names_task and case.path != "/api/v1/templates/{name}/":
        return
    if zlib.crc32(repr((params, case.body, case.query)).encode()) % 2:
        return
    if case.path == "/api/v1/templates/{name}/":
        case.path_parameters["name"] = "sd15-txt2img"
        return
    if is_worker_operation(case.path):
        task, lease_token = farm.leased_task()
        if key:
            case.path_parameters[key] = str(task.public_id)
        if isinstance(case.body, dict):
            if case.path == "/complete":
                case.body["prompt_id"] = str(task.public_id)
            if "lease_token" in case.body or case.path == "/complete":
                case.body["lease_token"] = lease_token
    elif key == "upload_id":
        case.path_parameters[key] = str(farm.owned_upload().public_id)
    else:
        case.path_parameters[key] = str(farm.owned_task().public_id)


def assert_error_shape(response) -> None:
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith("application/json"), (
        f"{response.status_code} is not JSON: {content_type!r} {response.text[:300]}"
    )
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str), body
    assert isinstance(body.get("fields"), dict), body


@schema.parametrize()
@pytest.mark.parametrize("auth", ["none", "valid"])
@settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_api_never_fails_and_errors_have_the_documented_shape(case, auth, farm):
    if auth == "valid":
        aim_at_real_task(case, farm)
    response = case.call(headers=farm.headers(auth, case.method, case.path))
    STATUSES[(case.operation.label, auth, response.status_code)] += 1
    assert response.status_code < HTTPStatus.INTERNAL_SERVER_ERROR, (
        f"{case.method} {case.formatted_path} → {response.status_code}\n{response.text[:2000]}"
    )
    if response.status_code >= HTTPStatus.BAD_REQUEST:
        assert_error_shape(response)
    if auth == "none" and case.method != "OPTIONS":
        # Without credentials nothing succeeds. (Reading or cancelling an anonymous task by its unguessable id
        # would; this farm has none. OPTIONS describes a view and nothing more.)
        assert response.status_code >= HTTPStatus.BAD_REQUEST, (
            f"{case.method} {case.formatted_path} answered {response.status_code} without credentials"
        )


def decodes_as_drf_cursor(cursor: str) -> bool:
    from urllib.parse import parse_qs

    try:
        tokens = parse_qs(base64.b64decode(cursor.encode("ascii"), validate=True).decode("ascii"))
    except (ValueError, UnicodeError):
        return False
    return bool(tokens) and set(tokens) <= {"o", "r", "p"}


def test_the_task_list_is_fuzzed_with_drf_shaped_cursors():
    """The hook above is in force for the list operation: a good share of its cases carry a cursor that
    DRF decodes (and then must refuse or follow without a 5xx, which the test above checks)."""
    seen: Counter = Counter()

    @settings(
        max_examples=60,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema["/api/v1/tasks/"]["GET"].as_strategy())
    def draw(case):
        seen[decodes_as_drf_cursor((case.query or {}).get("cursor") or "")] += 1

    draw()
    assert seen[True] >= sum(seen.values()) // 4, seen
