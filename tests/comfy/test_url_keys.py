"""ComfyUI URL keys: `/comfy/k/<key>/…` serves the front door as the key's owner, over HTTP and the socket;
keys are made on the tokens page, shown once, stored hashed, revocable, and never in a log line."""

import asyncio
import json
import logging
from http import HTTPStatus

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from generation import comfy_keys, services
from generation.models import ApiToken, Task
from generation.tokens import hash_token
from t2i_project.asgi import application
from tests.comfy.test_socket import Socket
from tests.comfy.workflows import NOISE
from tests.conftest import make_worker
from tests.factories import UserFactory, api_token_for

KEY = ApiToken.Kind.COMFY_KEY


def new_key(user, **fields) -> str:
    return services.api_token_create(user=user, kind=KEY, **fields)[1]


def prompt(client, base, **fields):
    return client.post(f"{base}/prompt", {"prompt": NOISE, **fields}, format="json")


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["", "/api"])
def test_a_key_in_the_path_serves_the_front_door_as_its_owner(user, other_user, worker, route):
    key = new_key(user)
    base = f"/comfy/k/{key}{route}"
    client = APIClient()  # no header at all
    answer = prompt(client, base, prompt_id="k-1")
    assert answer.status_code == HTTPStatus.OK, answer.content
    assert Task.objects.get(client_prompt_id="k-1").owner == user
    prompt(APIClient(), f"/comfy/k/{new_key(other_user)}", prompt_id="other")
    queue = client.get(f"{base}/queue").json()
    assert [item[1] for item in queue["queue_pending"]] == ["k-1"]  # the owner's own space only
    assert client.get(f"{base}/history/k-1").status_code == HTTPStatus.OK
    assert "KSampler" in client.get(f"{base}/object_info").json()


@pytest.mark.django_db
def test_a_key_is_stored_hashed_and_opens_nothing_but_the_front_door(user, worker):
    made, key = services.api_token_create(user=user, kind=KEY, name="krita")
    row = ApiToken.objects.get(pk=made.pk)
    assert row.token_hash == hash_token(key) and key not in {row.token_hash, row.token_hint, row.name}
    assert services.api_token_user(key) is None  # no REST API token
    rest = APIClient()
    rest.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert rest.get("/api/v1/tasks/").status_code == HTTPStatus.UNAUTHORIZED
    assert prompt(rest, "/comfy").status_code == HTTPStatus.UNAUTHORIZED
    token = api_token_for(user)  # and an API token is no URL key
    assert prompt(APIClient(), f"/comfy/k/{token}").status_code in (
        HTTPStatus.UNAUTHORIZED,
        HTTPStatus.FORBIDDEN,
    )
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_unknown_revoked_and_expired_keys_are_refused(settings, user, worker, clock):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}  # a bad key is never taken for anonymous
    refused = (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
    assert prompt(APIClient(), "/comfy/k/not-a-key").status_code in refused
    made, key = services.api_token_create(user=user, kind=KEY)
    services.api_token_revoke(user=user, token_id=made.pk)
    assert prompt(APIClient(), f"/comfy/k/{key}").status_code in refused
    key = new_key(user, expires_in_days=1)
    assert prompt(APIClient(), f"/comfy/k/{key}", prompt_id="in-time").status_code == HTTPStatus.OK
    clock.advance(2 * 86400)
    assert prompt(APIClient(), f"/comfy/k/{key}").status_code in refused
    assert list(Task.objects.values_list("client_prompt_id", flat=True)) == ["in-time"]


@pytest.mark.django_db
def test_a_key_header_sent_by_the_client_counts_for_nothing(user, worker):
    key = new_key(user)
    client = APIClient()
    client.credentials(HTTP_X_T2I_COMFY_KEY=key)
    assert prompt(client, "/comfy").status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
    assert prompt(client, f"/comfy/k/{key}/../../api/v1/tasks").status_code == HTTPStatus.NOT_FOUND


@pytest.mark.django_db
def test_the_key_never_reaches_a_log_line(user, worker, caplog):
    key = new_key(user)
    caplog.set_level(logging.DEBUG)
    client = APIClient()
    assert prompt(client, f"/comfy/k/{key}").status_code == HTTPStatus.OK
    bad = client.post(f"/comfy/k/{key}/prompt", "{not json", content_type="application/json")
    assert bad.status_code == HTTPStatus.BAD_REQUEST
    assert client.get(f"/comfy/k/{key}/history/nope/more").status_code == HTTPStatus.NOT_FOUND
    assert prompt(client, "/comfy/k/wrong-key").status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
    assert caplog.records and "/comfy/prompt" in caplog.text  # the requests were logged, without the keys
    assert key not in caplog.text and "wrong-key" not in caplog.text


def test_the_log_handler_masks_a_key_any_server_logged():
    """A server that logs the raw request line (runserver's Daphne) goes through the same handler."""
    assert settings.LOGGING["handlers"]["console"]["filters"] == ["mask_comfy_keys"]
    record = logging.LogRecord(
        "django.channels.server",
        logging.INFO,
        __file__,
        1,
        '"%s %s" %s',
        ("GET", "/comfy/k/s3cr3t/ws", 101),
        None,
    )
    assert comfy_keys.MaskComfyKeys().filter(record)
    assert record.getMessage() == '"GET /comfy/k/****/ws" 101'
    assert comfy_keys.mask("/comfy/k/abc/prompt and /comfy/k/def") == "/comfy/k/****/prompt and /comfy/k/****"


def test_the_asgi_rewrite_takes_the_key_out_of_the_scope_in_place():
    scope = {
        "type": "http",
        "path": "/comfy/k/s3cr3t/api/prompt",
        "raw_path": b"/comfy/k/s3cr3t/api/prompt",
        "headers": [(b"x-t2i-comfy-key", b"forged"), (b"host", b"farm")],
    }
    comfy_keys.rewrite_scope(scope)
    assert scope["path"] == "/comfy/api/prompt" and scope["raw_path"] == b"/comfy/api/prompt"
    assert scope["headers"] == [(b"host", b"farm"), (b"x-t2i-comfy-key", b"s3cr3t")]
    plain = {"type": "http", "path": "/comfy/prompt", "headers": [(b"x-t2i-comfy-key", b"forged")]}
    comfy_keys.rewrite_scope(plain)
    assert plain["headers"] == [] and plain["path"] == "/comfy/prompt"
    assert comfy_keys.split("/comfy/k/abc/../x") is None and comfy_keys.split("/comfy/k/abc") == (
        "abc",
        "/comfy/",
    )


@pytest.mark.django_db(transaction=True)
def test_the_key_works_through_the_asgi_server_and_on_the_socket():
    user = UserFactory(username="kim")
    make_worker()
    key = new_key(user)

    async def get(path: str) -> tuple[dict, int, bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"host", b"testserver")], "server": ("testserver", 80),
            "client": ("127.0.0.1", 5000),
        }  # fmt: skip
        sent: list[dict] = []
        inbox: asyncio.Queue = asyncio.Queue()
        inbox.put_nowait({"type": "http.request", "body": b"", "more_body": False})

        async def receive():
            return await inbox.get()  # then nothing: the client stays connected

        async def send(message):
            sent.append(message)

        await application(scope, receive, send)
        return scope, sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    async def follow():
        scope, status, body = await get(f"/comfy/k/{key}/prompt")
        assert status == 200 and json.loads(body) == {"exec_info": {"queue_remaining": 0}}
        assert key not in scope["path"]  # what the server's access log reads
        _, status, _ = await get("/comfy/k/nobody/prompt")
        assert status in (401, 403)
        socket = Socket("clientId=c1", path=f"/comfy/k/{key}/ws")
        assert (await socket.connect())["type"] == "websocket.accept"
        assert (await socket.frame())["type"] == "status"
        await socket.close()
        refused = Socket("clientId=c2", path="/comfy/k/nobody/ws")
        assert (await refused.connect())["type"] == "websocket.close"
        await asyncio.wait_for(refused.app, 5)

    asyncio.run(follow())


@pytest.mark.django_db
def test_the_tokens_page_makes_a_key_shown_once_and_revokes_it(client, user):
    client.force_login(user)
    page = client.post("/accounts/tokens/", {"kind": "comfy_key", "name": "krita"})
    assert page.status_code == HTTPStatus.OK and page["Cache-Control"].startswith("max-age=0")
    made = ApiToken.objects.get(user=user)
    key = page.context["new_token"]
    assert made.kind == KEY and made.token_hash == hash_token(key)
    assert page.context["new_base_url"] == f"http://testserver/comfy/k/{key}"
    listing = client.get("/accounts/tokens/").content.decode()
    assert key not in listing and "ComfyUI URL key" in listing
    client.post(f"/accounts/tokens/{made.pk}/revoke/")
    assert not ApiToken.objects.exists()


def test_the_middleware_stays_async_under_asgi():
    """A sync-only middleware would put every ASGI request, the lease long polls included, on a thread."""
    from asgiref.sync import iscoroutinefunction
    from django.test import RequestFactory

    async def view(request):
        return request.path, request.META.get(comfy_keys.META_KEY)

    middleware = comfy_keys.ComfyKeyMiddleware(view)
    assert iscoroutinefunction(middleware)
    request = RequestFactory().get("/comfy/k/abc/history")
    assert asyncio.run(middleware(request)) == ("/comfy/history", "abc")


@pytest.mark.django_db
def test_an_upload_through_a_key_belongs_to_its_owner(user, worker):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from generation.models import InputImage
    from tests.conftest import png_bytes

    image = SimpleUploadedFile("cat.png", png_bytes(), "image/png")
    answer = APIClient().post(f"/comfy/k/{new_key(user)}/upload/image", {"image": image}, format="multipart")
    assert answer.status_code == HTTPStatus.OK, answer.content
    assert InputImage.objects.get().owner == user
