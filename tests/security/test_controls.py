"""The security controls of SECURITY.md, one test (or a few) each.

Worker-token checks, another worker's lease and users' tasks through the REST API are proven in
tests/workers_app/test_auth.py; this file covers the rest: CSRF, cookies, SECRET_KEY, login lockout, the web
pages' and seed endpoints' ownership rules, admin, headers, and tokens kept out of logs and SQL.
"""

import io
import logging
import os
import subprocess
import sys
from datetime import timedelta
from html.parser import HTMLParser
from http import HTTPStatus
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from django.contrib import admin
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from generation import services
from generation.models import Image, Task
from tests.conftest import capabilities, make_worker, png_bytes, submit_task, worker_client
from tests.factories import TaskFactory, UserFactory, api_token_for
from tests.web.conftest import completed
from workers_app import services as worker_services
from workers_app.daemon.scheduler import SchedulerClient

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-alice-123"  # tests/conftest.py: user


# --- Helpers ----------------------------------------------------------------------------------------------


class _Forms(HTMLParser):
    """Every <form> of a page: its method, action and the names of its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"method": (attrs.get("method") or "get").lower(), "inputs": set(), **attrs})
        elif tag == "input" and self.forms:
            self.forms[-1]["inputs"].add(attrs.get("name"))


def forms_of(html: str) -> list[dict]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def settings_in_subprocess(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    """Import t2i_project.settings in a fresh interpreter with only `env` (plus PATH) set."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)} | env
    return subprocess.run(
        [sys.executable, "-c", f"import t2i_project.settings as s\n{code}"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def worker_pair(db):
    return make_worker("gpu-1")


@pytest.fixture
def done(user, worker_pair):
    """A completed task of `user` with one image."""
    return completed(user, worker_pair[0])


# --- Workers: tokens ------------------------------------------------------------------------------------


def test_worker_token_lookup_sends_only_its_hash_to_the_database(worker_pair):
    worker, token = worker_pair

    with CaptureQueriesContext(connection) as queries:
        response = worker_client(token).post("/api/v1/worker/heartbeat", {}, format="json")

    assert response.status_code == HTTPStatus.OK
    sql = "\n".join(q["sql"] for q in queries.captured_queries)
    assert worker.token_hash in sql  # looked up by its SHA-256 ...
    assert token not in sql  # ... and the token itself never leaves the process


def test_a_worker_token_is_not_a_user_credential(worker_pair):
    _, token = worker_pair
    client = worker_client(token)

    for path in ("/api/v1/tasks/", "/generate"):
        response = client.post(path, {"prompt": "a fox", "width": 64, "height": 64}, format="json")
        assert response.status_code == HTTPStatus.UNAUTHORIZED, path
        assert response.json()["error"] == "not_authenticated"
    assert client.get("/api/v1/tasks/").status_code == HTTPStatus.UNAUTHORIZED
    assert Task.objects.count() == 0


def test_a_call_without_credentials_is_a_401_that_names_the_scheme(anon):
    """Token clients expect 401 with WWW-Authenticate (RFC 9110), not 403."""
    response = anon.get("/api/v1/tasks/")
    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert response["WWW-Authenticate"] == "Token"
    assert response.json()["error"] == "not_authenticated"


def test_the_workers_list_is_for_staff_only(api, staff_api, worker):
    """SECURITY.md lists workers (names, devices, capabilities) as staff-only."""
    assert api.get("/api/v1/workers/").status_code == HTTPStatus.FORBIDDEN
    response = staff_api.get("/api/v1/workers/")
    assert response.status_code == HTTPStatus.OK
    assert [w["name"] for w in response.json()] == [worker.name]


# --- Users see and cancel only their own tasks (web pages, seed endpoints, images) -----------------------


def test_web_pages_hide_another_users_task_and_images(done, other_user, client_for):
    image = done.images.get()
    bob = client_for(other_user)

    for url in (
        reverse("web:task", kwargs={"task_id": done.public_id}),
        reverse("web:image", kwargs={"image_id": image.public_id}),
        reverse("web:image-download", kwargs={"image_id": image.public_id}),
        f"/status/{done.public_id}",
    ):
        assert bob.get(url).status_code == HTTPStatus.NOT_FOUND, url
    assert bob.post(reverse("web:image-delete", kwargs={"image_id": image.public_id})).status_code == 404
    assert Image.objects.filter(pk=image.pk).exists()
    gallery = bob.get(reverse("web:gallery"))
    assert gallery.status_code == HTTPStatus.OK
    assert image.file.url not in gallery.content.decode()


def test_web_cancel_refuses_another_users_task_but_staff_may(user, other_user, staff, client_for):
    task = TaskFactory(owner=user)
    url = reverse("web:task-cancel", kwargs={"task_id": task.public_id})

    assert client_for(other_user).post(url).status_code == HTTPStatus.NOT_FOUND
    assert client_for(None).post(url).status_code == HTTPStatus.NOT_FOUND
    task.refresh_from_db()
    assert task.status == Task.Status.QUEUED

    assert client_for(staff).post(url).status_code == HTTPStatus.FOUND
    task.refresh_from_db()
    assert task.status == Task.Status.CANCELLED


def test_seed_status_follows_the_same_visibility_rule(user, other_user, staff):
    task = TaskFactory(owner=user)
    path = f"/status/{task.public_id}"

    def client(who):
        c = APIClient()
        if who is not None:
            c.force_authenticate(who)
        return c

    assert client(None).get(path).status_code == HTTPStatus.NOT_FOUND
    assert client(other_user).get(path).status_code == HTTPStatus.NOT_FOUND
    assert client(user).get(path).json()["status"] == "pending"
    assert client(staff).get(path).status_code == HTTPStatus.OK


def test_anonymous_tasks_are_cancelled_anonymously_only_while_anonymous_submit_is_on(settings, client_for):
    task = TaskFactory()
    api = APIClient()

    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": False}
    assert api.post(f"/api/v1/tasks/{task.public_id}/cancel/").status_code == HTTPStatus.NOT_FOUND
    web = reverse("web:task-cancel", kwargs={"task_id": task.public_id})
    assert client_for(None).post(web).status_code == HTTPStatus.NOT_FOUND
    task.refresh_from_db()
    assert task.status == Task.Status.QUEUED

    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    assert api.post(f"/api/v1/tasks/{task.public_id}/cancel/").status_code == HTTPStatus.OK


def test_seed_complete_without_a_lease_token_is_an_exception_the_operator_can_turn_off(worker_pair, settings):
    worker, token = worker_pair
    task = submit_task(prompt="a fox")
    assert services.task_lease_next(worker=worker).task.pk == task.pk
    body = {"prompt_id": str(task.public_id), "images": [upload_png()]}

    settings.T2I = {**settings.T2I, "SEED_COMPLETE_WITHOUT_LEASE": False}
    refused = worker_client(token).post("/complete", body, format="multipart")
    assert refused.status_code == HTTPStatus.BAD_REQUEST
    assert "lease_token" in refused.json()["fields"]
    task.refresh_from_db()
    assert task.status == Task.Status.LEASED

    settings.T2I = {**settings.T2I, "SEED_COMPLETE_WITHOUT_LEASE": True}  # the default
    body["images"] = [upload_png()]
    assert worker_client(token).post("/complete", body, format="multipart").status_code == HTTPStatus.OK
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED


def upload_png() -> SimpleUploadedFile:
    return SimpleUploadedFile("out.png", png_bytes(64, 64), "image/png")


# --- Admin is staff-only --------------------------------------------------------------------------------


def admin_urls() -> list[str]:
    urls = [reverse("admin:index")]
    for model in admin.site._registry:
        meta = model._meta
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
    return urls


def test_admin_is_for_staff_only(user, staff, client_for):
    urls = admin_urls()
    assert len(urls) > 5

    for who in (None, user):
        client = client_for(who)
        for url in urls:
            response = client.get(url)
            assert response.status_code == HTTPStatus.FOUND, url
            assert response["Location"].startswith(reverse("admin:login")), url
    staff_client = client_for(staff)
    for url in urls:
        assert staff_client.get(url).status_code == HTTPStatus.OK, url


# --- CSRF -----------------------------------------------------------------------------------------------


def test_every_post_form_on_every_page_carries_a_csrf_token(done, staff, client_for, settings):
    settings.T2I = {**settings.T2I, "SIGNUP_ENABLED": True}
    image = done.images.get()
    queued = TaskFactory(owner=done.owner)
    pages = {
        None: [reverse("web:login"), reverse("web:signup"), reverse("admin:login")],
        done.owner: [
            reverse("web:generate"),
            reverse("web:task", kwargs={"task_id": queued.public_id}),
            reverse("web:queue"),
            reverse("web:gallery"),
            reverse("web:image", kwargs={"image_id": image.public_id}),
            reverse("web:legacy"),
        ],
    }
    post_forms = 0
    for who, urls in pages.items():
        client = client_for(who)
        for url in urls:
            response = client.get(url)
            assert response.status_code == HTTPStatus.OK, url
            for form in forms_of(response.content.decode()):
                if form["method"] == "post" or form.get("id") == "legacy-form":  # legacy.js POSTs it
                    post_forms += 1
                    assert "csrfmiddlewaretoken" in form["inputs"], (url, form)
    assert post_forms >= 9  # login, signup, admin login, generate, cancel ×2, delete, legacy, log out…


def csrf_client(user=None) -> Client:
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    return client


def csrf_token_for(client: Client, url: str) -> str:
    """Load a page the way a browser would and take the token from its form."""
    client.get(url)
    return client.cookies["csrftoken"].value


def test_web_forms_refuse_a_post_without_the_csrf_token(done, user, other_user):
    image = done.images.get()
    queued = TaskFactory(owner=user)
    targets = [
        (reverse("web:generate"), {"prompt": "a fox", "width": 64, "height": 64, "steps": 4}),
        (reverse("web:task-cancel", kwargs={"task_id": queued.public_id}), {}),
        (reverse("web:image-delete", kwargs={"image_id": image.public_id}), {}),
        (reverse("web:logout"), {}),
    ]
    client = csrf_client(user)
    tasks_before = Task.objects.count()

    for url, data in targets:
        response = client.post(url, data)
        assert response.status_code == HTTPStatus.FORBIDDEN, url

    assert Task.objects.count() == tasks_before
    queued.refresh_from_db()
    assert queued.status == Task.Status.QUEUED
    assert Image.objects.filter(pk=image.pk).exists()
    assert client.get(reverse("web:queue")).status_code == HTTPStatus.OK  # still signed in
    for url, data in [
        (reverse("web:login"), {"username": "alice", "password": PASSWORD}),
        (
            reverse("web:signup"),
            {"username": "eve", "password1": "x7!long-pass", "password2": "x7!long-pass"},
        ),
        (reverse("admin:login"), {"username": "alice", "password": PASSWORD}),
    ]:
        assert csrf_client().post(url, data).status_code == HTTPStatus.FORBIDDEN, url
    # The same POST with the page's token goes through (so the refusals above are about the token).
    token = csrf_token_for(client, reverse("web:task", kwargs={"task_id": queued.public_id}))
    cancel = reverse("web:task-cancel", kwargs={"task_id": queued.public_id})
    assert client.post(cancel, {"csrfmiddlewaretoken": token}).status_code == HTTPStatus.FOUND
    queued.refresh_from_db()
    assert queued.status == Task.Status.CANCELLED


def test_api_with_a_session_needs_the_csrf_token_for_unsafe_methods(user):
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(user)
    body = {"prompt": "a fox", "width": 64, "height": 64}

    for path in ("/api/v1/tasks/", "/generate"):
        refused = session.post(path, body, format="json")
        assert refused.status_code == HTTPStatus.FORBIDDEN, path
        assert refused.json()["error"] == "permission_denied"
        assert "CSRF" in refused.json()["detail"]
    assert Task.objects.count() == 0
    assert session.get("/api/v1/tasks/").status_code == HTTPStatus.OK  # safe methods need none

    token = csrf_token_for(session, reverse("web:legacy"))
    accepted = session.post("/api/v1/tasks/", body, format="json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == HTTPStatus.CREATED
    task_id = accepted.json()["id"]
    assert session.post(f"/api/v1/tasks/{task_id}/cancel/").status_code == HTTPStatus.FORBIDDEN
    # An API token is not ambient authority: no CSRF token needed.
    tokened = APIClient(enforce_csrf_checks=True)
    tokened.credentials(HTTP_AUTHORIZATION=f"Token {api_token_for(user)}")
    assert tokened.post(f"/api/v1/tasks/{task_id}/cancel/").status_code == HTTPStatus.OK


# --- Cookies, SECRET_KEY --------------------------------------------------------------------------------


def test_session_and_csrf_cookies_are_secure_and_httponly_outside_debug(user):
    assert not os.environ.get("DEBUG")
    client = Client()
    client.get(reverse("web:login"))
    response = client.post(reverse("web:login"), {"username": "alice", "password": PASSWORD})

    assert response.status_code == HTTPStatus.FOUND
    session = response.cookies["sessionid"]
    assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"
    csrf = client.cookies["csrftoken"]
    assert csrf["secure"] and csrf["httponly"]


@pytest.mark.parametrize(
    ("env", "secure"),
    [({"SECRET_KEY": "k" * 50}, True), ({"DEBUG": "1"}, False)],
    ids=["production", "debug"],
)
def test_cookie_settings_follow_debug(env, secure):
    result = settings_in_subprocess(
        env,
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE,"
        " s.SESSION_COOKIE_HTTPONLY, s.CSRF_COOKIE_HTTPONLY)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(secure), str(secure), "True", "True"]


@pytest.mark.parametrize(
    "env",
    [{}, {"SECRET_KEY": ""}, {"SECRET_KEY": "  "}, {"SECRET_KEY": "dev-only-insecure-key-do-not-deploy"}],
    ids=["unset", "empty", "blank", "the-dev-key"],
)
def test_settings_refuse_to_load_without_a_secret_key_outside_debug(env):
    result = settings_in_subprocess(env, "print('loaded')")

    assert result.returncode != 0
    assert "loaded" not in result.stdout
    assert "ImproperlyConfigured: SECRET_KEY is required when DEBUG is off" in result.stderr


def test_settings_without_a_secret_key_load_in_debug_and_for_the_standalone_commands():
    assert settings_in_subprocess({"DEBUG": "1"}, "print('loaded')").stdout.strip() == "loaded"
    # The worker daemon and the simulator sign nothing: a random key per process, never a known one.
    keys = [
        settings_in_subprocess({"T2I_STANDALONE_COMMAND": "1"}, "print(s.SECRET_KEY)").stdout.strip()
        for _ in range(2)
    ]
    assert keys[0] != keys[1] and len(keys[0]) >= 50
    assert "dev-only" not in keys[0]


# --- Login rate limiting --------------------------------------------------------------------------------


def sign_in(client: Client, password: str, username: str = "alice", url: str | None = None, **extra):
    return client.post(url or reverse("web:login"), {"username": username, "password": password}, **extra)


@pytest.mark.parametrize("page", ["web:login", "admin:login"])
def test_five_failed_sign_ins_lock_out_that_username_from_that_address(user, staff, page):
    url = reverse(page)
    if page == "admin:login":
        user.is_staff = True
        user.save()
    attacker = Client(REMOTE_ADDR="10.0.0.66")

    for _ in range(4):
        assert sign_in(attacker, "wrong", url=url).status_code == HTTPStatus.OK  # the form again, with errors
    assert sign_in(attacker, "wrong", url=url).status_code == HTTPStatus.TOO_MANY_REQUESTS  # the fifth
    locked = sign_in(attacker, PASSWORD, url=url)  # now even the right password is refused

    assert locked.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert "_auth_user_id" not in attacker.session
    # The same person from their own machine, and other accounts from the attacker's, are not locked out.
    assert sign_in(Client(REMOTE_ADDR="10.0.0.7"), PASSWORD, url=url).status_code == HTTPStatus.FOUND
    other = sign_in(attacker, "pw-ops-123", username="ops", url=url)
    assert other.status_code == HTTPStatus.FOUND


def test_the_lockout_ends_after_the_cool_off_and_a_success_resets_the_count(user, settings):
    client = Client(REMOTE_ADDR="10.0.0.66")
    for _ in range(4):
        sign_in(client, "wrong")
    assert sign_in(client, PASSWORD).status_code == HTTPStatus.FOUND  # 4 failures: still allowed
    client.logout()
    for _ in range(4):
        sign_in(client, "wrong")
    assert sign_in(client, PASSWORD).status_code == HTTPStatus.FOUND  # the success reset the count
    client.logout()

    for _ in range(5):
        sign_in(client, "wrong")
    assert sign_in(client, PASSWORD).status_code == HTTPStatus.TOO_MANY_REQUESTS
    # 15 minutes (T2I_LOGIN_LOCKOUT_MINUTES) after the last failure the pair may try again.
    assert settings.AXES_COOLOFF_TIME.total_seconds() == 15 * 60
    AccessAttempt.objects.update(
        attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16)
    )
    assert sign_in(client, PASSWORD).status_code == HTTPStatus.FOUND


def test_one_address_cannot_try_a_few_passwords_on_every_account(settings, user):
    """Besides the pair limit, T2I_LOGIN_ADDRESS_FAILURE_LIMIT failures from one address, spread over any
    usernames, lock that address out; signing into one's own account from it does not clear the count."""
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = 8
    for name in ("ann", "ben", "cid", "dee"):
        UserFactory(username=name, password=f"pw-{name}-123")
    attacker = Client(REMOTE_ADDR="10.0.0.66")
    for name in ("ann", "ben", "cid"):
        for _ in range(2):  # below the pair limit (5) for every account
            assert sign_in(attacker, "wrong", username=name).status_code == HTTPStatus.OK
    assert sign_in(attacker, PASSWORD).status_code == HTTPStatus.FOUND  # 6 failures: still allowed
    attacker.logout()
    assert sign_in(attacker, "wrong", username="dee").status_code == HTTPStatus.OK  # the 7th
    assert sign_in(attacker, "wrong", username="dee").status_code == HTTPStatus.TOO_MANY_REQUESTS  # the 8th
    # The address is locked for every account, the right password too; other addresses are not.
    assert sign_in(attacker, "pw-ann-123", username="ann").status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert (
        sign_in(Client(REMOTE_ADDR="10.0.0.7"), "pw-ann-123", username="ann").status_code == HTTPStatus.FOUND
    )
    # Once the cool-off has passed since the last failure, the address may sign in again.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert sign_in(attacker, "pw-ann-123", username="ann").status_code == HTTPStatus.FOUND


def test_lockout_limits_come_from_the_environment():
    result = settings_in_subprocess(
        {"SECRET_KEY": "k" * 50, "T2I_LOGIN_FAILURE_LIMIT": "3", "T2I_LOGIN_LOCKOUT_MINUTES": "60"},
        "print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds(), s.AXES_LOCKOUT_PARAMETERS)",
    )
    assert result.stdout.strip().split(maxsplit=2) == ["3", "3600.0", "[['username', 'ip_address']]"]
    bad = settings_in_subprocess({"SECRET_KEY": "k" * 50, "T2I_LOGIN_FAILURE_LIMIT": "0"}, "")
    assert "T2I_LOGIN_FAILURE_LIMIT=0 is below the minimum 1" in bad.stderr


# --- Security headers -----------------------------------------------------------------------------------


def test_security_headers_on_pages_api_errors_and_media(done, client_for):
    image = done.images.get()
    alice = client_for(done.owner)
    responses = {
        "page": alice.get(reverse("web:generate")),
        "api": APIClient().get("/api/v1/tasks/"),
        "api 404": alice.get("/api/v1/no-such-endpoint/"),
        "media": alice.get(image.file.url),
        "download": alice.get(reverse("web:image-download", kwargs={"image_id": image.public_id})),
    }
    for name, response in responses.items():
        assert response["X-Content-Type-Options"] == "nosniff", name
        assert response["X-Frame-Options"] == "DENY", name
        assert response["Referrer-Policy"] == "same-origin", name
        assert response["Cross-Origin-Opener-Policy"] == "same-origin", name


# --- Secrets and tokens never reach the logs ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_tokens_and_passwords_never_reach_the_logs(live_server, caplog, capsys, django_user_model):
    caplog.set_level(logging.DEBUG)  # every logger, SQL (django.db.backends) and urllib3 included
    out = io.StringIO()
    call_command("createworker", "gpu-log", "--token-only", stdout=out)
    token = out.getvalue().strip()
    alice = django_user_model.objects.create_user("alice", password=PASSWORD)
    api_token = api_token_for(alice)
    secrets = {"worker token": token, "API token": api_token, "password": PASSWORD}

    with CaptureQueriesContext(connection):  # the SQL is logged too, with its parameters
        # A user submits two tasks with an API token, a worker runs them through the daemon's client.
        user_api = APIClient()
        user_api.credentials(HTTP_AUTHORIZATION=f"Token {api_token}")
        for _ in range(2):
            body = {"prompt": "a fox", "width": 64, "height": 64, "template": "noise-test"}
            assert user_api.post("/api/v1/tasks/", body, format="json").status_code == HTTPStatus.CREATED
        client = SchedulerClient(live_server.url, token)
        client.register(name="gpu-log", prefetch=1, capabilities=capabilities())
        first = client.lease(wait=0)
        client.start(first.task_id, first.lease_token, "prompt-1")
        client.progress(first.task_id, first.lease_token, 1, 4)
        client.heartbeat([(first.task_id, first.lease_token)])
        client.complete(first.task_id, first.lease_token, [("out.png", png_bytes(64, 64))])
        second = client.lease(wait=0)
        client.fail(second.task_id, second.lease_token, code="internal", message="boom", retryable=False)
        client.offline()
        # Failed attempts: a wrong worker token, a wrong password, a rotated token.
        with pytest.raises(Exception):  # any refusal will do
            SchedulerClient(live_server.url, token[::-1]).heartbeat([])
        Client().post(reverse("web:login"), {"username": "alice", "password": PASSWORD + "x"})
        Client().post(reverse("web:login"), {"username": "alice", "password": PASSWORD})
        worker = worker_services.worker_by_token(token)
        worker_services.worker_rotate_token(worker=worker)

    logged = caplog.text + capsys.readouterr().err
    assert "task completed" in logged and "worker registered" in logged  # the logs were captured
    for name, secret in secrets.items():
        assert secret not in logged, f"the {name} was logged"
    assert PASSWORD + "x" not in logged
