"""A worker's whole /object_info: named by its digest in the capabilities, its body sent only when the
scheduler lacks it, stored once however many workers share it; bad bodies are 4xx naming the field."""

import gzip
import hashlib
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.utils import timezone

from tests.comfy.specs import body_of, subset
from tests.conftest import capabilities, make_worker, worker_client
from workers_app import object_info_specs
from workers_app.models import ObjectInfoSpec, Worker

pytestmark = pytest.mark.django_db

REGISTER = "/api/v1/worker/register"
INVENTORY = "/api/v1/worker/inventory"
BODY = body_of(subset())
DIGEST = hashlib.sha256(BODY).hexdigest()


def send(client, body: bytes = BODY, digest: str = DIGEST, encoding: str | None = "gzip"):
    data = gzip.compress(body) if encoding == "gzip" else body
    headers = {"HTTP_CONTENT_ENCODING": encoding} if encoding else {}
    return client.generic(
        "POST", f"/api/v1/worker/object_info/{digest}", data, content_type="application/json", **headers
    )


def with_digest(digest: str = DIGEST) -> dict:
    return {**capabilities(), "object_info_sha256": digest}


def test_register_asks_for_the_body_once_and_workers_share_it():
    _, token = make_worker("gpu-1")
    client = worker_client(token)
    answer = client.post(REGISTER, {"capabilities": with_digest()}, format="json")
    assert answer.status_code == HTTPStatus.OK and answer.json()["object_info"] == "send"
    stored = send(client)
    assert stored.status_code == HTTPStatus.OK, stored.json()
    assert stored.json() == {"sha256": DIGEST, "stored": True}
    row = ObjectInfoSpec.objects.get()
    assert (row.sha256, row.size, row.classes) == (DIGEST, len(BODY), len(subset()))
    assert gzip.decompress(bytes(row.body)) == BODY  # ComfyUI's order kept, byte for byte
    _, other = make_worker("gpu-2")
    again = worker_client(other).post(REGISTER, {"capabilities": with_digest()}, format="json")
    assert again.json()["object_info"] == "have"
    assert send(worker_client(other), encoding=None).json() == {"sha256": DIGEST, "stored": False}
    assert ObjectInfoSpec.objects.count() == 1
    assert Worker.objects.get(name="gpu-2").capabilities["object_info_sha256"] == DIGEST


def test_inventory_answers_whether_to_send():
    _, token = make_worker("gpu-1")
    client = worker_client(token)
    answer = client.post(INVENTORY, {"capabilities": with_digest()}, format="json")
    assert answer.json() == {"changed": True, "object_info": "send"}
    send(client)
    again = client.post(INVENTORY, {"capabilities": with_digest()}, format="json")
    assert again.json() == {"changed": False, "object_info": "have"}


def test_an_older_daemon_names_no_spec():
    _, token = make_worker("gpu-1")
    answer = worker_client(token).post(REGISTER, {"capabilities": capabilities()}, format="json")
    assert answer.json()["object_info"] is None


@pytest.mark.parametrize(
    ("body", "digest", "encoding", "status", "field"),
    [
        (BODY, "abc", "gzip", HTTPStatus.BAD_REQUEST, "sha256"),
        (BODY, "0" * 64, "gzip", HTTPStatus.BAD_REQUEST, "sha256"),
        (b"", DIGEST, None, HTTPStatus.BAD_REQUEST, "body"),
        (b"[1, 2]", hashlib.sha256(b"[1, 2]").hexdigest(), None, HTTPStatus.BAD_REQUEST, "body"),
        (b"{not json", hashlib.sha256(b"{not json").hexdigest(), None, HTTPStatus.BAD_REQUEST, "body"),
        (b'{"A": 1}', hashlib.sha256(b'{"A": 1}').hexdigest(), None, HTTPStatus.BAD_REQUEST, "body"),
        (b'{"A": {"input": []}}', hashlib.sha256(b'{"A": {"input": []}}').hexdigest(), None, 400, "body"),
        (BODY, DIGEST, "br", HTTPStatus.BAD_REQUEST, "Content-Encoding"),
    ],
)
def test_bad_bodies_are_refused_naming_the_field(body, digest, encoding, status, field):
    _, token = make_worker("gpu-1")
    answer = send(worker_client(token), body, digest, encoding)
    assert answer.status_code == status, answer.content
    assert field in answer.json()["fields"] and not ObjectInfoSpec.objects.exists()


def test_not_gzip_and_gzip_bombs(settings):
    settings.T2I = {**settings.T2I, "OBJECT_INFO_MAX_BYTES": 10_000}
    _, token = make_worker("gpu-1")
    client = worker_client(token)
    not_gzip = client.generic(
        "POST", f"/api/v1/worker/object_info/{DIGEST}", b"plain", HTTP_CONTENT_ENCODING="gzip"
    )
    assert not_gzip.status_code == HTTPStatus.BAD_REQUEST and "body" in not_gzip.json()["fields"]
    bomb = b'{"A": {"x": "' + b"a" * 50_000 + b'"}}'
    answer = send(client, bomb, hashlib.sha256(bomb).hexdigest())
    assert answer.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE and answer.json()["error"] == "too_large"
    too_long = send(client, bomb, hashlib.sha256(bomb).hexdigest(), encoding=None)
    assert too_long.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert not ObjectInfoSpec.objects.exists()


def test_a_bad_digest_in_the_capabilities_is_refused():
    _, token = make_worker("gpu-1")
    answer = worker_client(token).post(REGISTER, {"capabilities": with_digest("XYZ")}, format="json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert "capabilities.object_info_sha256" in answer.json()["fields"]


def test_specs_no_worker_names_are_pruned_after_an_hour():
    _, token = make_worker("gpu-1")
    client = worker_client(token)
    client.post(INVENTORY, {"capabilities": with_digest()}, format="json")
    send(client)
    ObjectInfoSpec.objects.update(named_at=timezone.now() - timedelta(hours=2))
    assert object_info_specs.object_info_specs_prune() == 0  # still named by gpu-1
    client.post(INVENTORY, {"capabilities": with_digest("1" * 64)}, format="json")  # its install changed
    assert not ObjectInfoSpec.objects.exists()


def test_the_admin_shows_the_spec_a_worker_names(admin_client):
    from django.urls import reverse

    worker, token = make_worker("gpu-1")
    page = admin_client.get(reverse("admin:workers_app_worker_change", args=[worker.pk])).content.decode()
    assert "not reported (an older daemon)" in page
    client = worker_client(token)
    client.post(INVENTORY, {"capabilities": with_digest()}, format="json")
    page = admin_client.get(reverse("admin:workers_app_worker_change", args=[worker.pk])).content.decode()
    assert f"sha256 {DIGEST[:16]}…, not received yet" in page
    send(client)
    page = admin_client.get(reverse("admin:workers_app_worker_change", args=[worker.pk])).content.decode()
    assert f"sha256 {DIGEST[:16]}…, {len(subset())} classes, shared by 1 worker(s)" in page
    assert f"{len(BODY):,} bytes" in page
