"""Users' API tokens (SECURITY.md, "Users"): only a hash is stored, a token is shown once, its owner lists and
revokes it, it may expire, `createapitoken` makes one, and the old plain-text DRF tokens were hashed."""

import io
import re
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from generation.models import ApiToken
from generation.tokens import hash_token
from tests.factories import api_token_for

pytestmark = pytest.mark.django_db


def token_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def works(token: str) -> bool:
    status = token_client(token).get("/api/v1/tasks/").status_code
    assert status in (HTTPStatus.OK, HTTPStatus.UNAUTHORIZED), status
    return status == HTTPStatus.OK


def test_a_token_made_on_the_account_page_is_shown_once_and_stored_hashed(client_for, user):
    page = client_for(user)
    response = page.post(reverse("web:api-tokens"), {"name": "my script", "expires_in_days": ""})
    assert response.status_code == HTTPStatus.OK
    assert "no-store" in response["Cache-Control"]
    token = re.search(r'<code class="token" id="new-token">([^<]+)</code>', response.content.decode()).group(
        1
    )

    row = ApiToken.objects.get(user=user)
    assert row.name == "my script" and row.expires_at is None
    assert row.token_hash == hash_token(token) and token not in (row.token_hash, row.token_hint)
    assert works(token)

    listing = page.get(reverse("web:api-tokens")).content.decode()
    assert "my script" in listing and row.token_hint in listing and token not in listing


def test_the_token_lookup_sends_only_its_hash_to_the_database(user):
    from django.test.utils import CaptureQueriesContext

    token = api_token_for(user)
    with CaptureQueriesContext(connection) as queries:
        assert works(token)
    sql = "\n".join(q["sql"] for q in queries.captured_queries)
    assert hash_token(token) in sql and token not in sql


def test_users_list_and_revoke_only_their_own_tokens(client_for, user, other_user):
    mine, theirs = api_token_for(user, name="mine"), api_token_for(other_user, name="theirs")
    page = client_for(user)
    listing = page.get(reverse("web:api-tokens")).content.decode()
    assert "mine" in listing and "theirs" not in listing

    their_row = ApiToken.objects.get(user=other_user)
    revoke_theirs = reverse("web:api-token-revoke", kwargs={"token_id": their_row.pk})
    assert page.post(revoke_theirs).status_code == HTTPStatus.NOT_FOUND
    assert works(theirs)

    my_row = ApiToken.objects.get(user=user)
    response = page.post(reverse("web:api-token-revoke", kwargs={"token_id": my_row.pk}))
    assert response.status_code == HTTPStatus.FOUND
    assert not ApiToken.objects.filter(pk=my_row.pk).exists()
    assert not works(mine)
    assert client_for(None).get(reverse("web:api-tokens")).status_code == HTTPStatus.FOUND  # to the login


def test_an_expired_token_or_an_inactive_user_is_refused(user, other_user):
    expiring = api_token_for(user, expires_in_days=1)
    assert works(expiring)
    ApiToken.objects.filter(user=user).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = token_client(expiring).get("/api/v1/tasks/")
    assert response.status_code == HTTPStatus.UNAUTHORIZED and response["WWW-Authenticate"] == "Token"

    token = api_token_for(other_user)
    other_user.is_active = False
    other_user.save()
    assert not works(token)


def test_a_bad_expiry_is_refused_with_the_field_named(client_for, user):
    response = client_for(user).post(reverse("web:api-tokens"), {"name": "x", "expires_in_days": "0"})
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "expires_in_days" in response.context["form"].errors
    assert not ApiToken.objects.exists()


def test_createapitoken_prints_a_working_token_once(user):
    out = io.StringIO()
    call_command("createapitoken", user.username, "--token-only", "--expires-days", "30", stdout=out)
    token = out.getvalue().strip()
    assert works(token)
    row = ApiToken.objects.get(user=user)
    assert row.token_hash == hash_token(token)
    assert timedelta(days=29) < row.expires_at - timezone.now() <= timedelta(days=30)


@pytest.mark.django_db(transaction=True)
def test_the_migration_hashes_old_plain_text_tokens_and_they_keep_working(user):
    """Tokens made by DRF's authtoken app (plain text) before this release keep working, and their plain text
    is gone from the database."""
    executor = MigrationExecutor(connection)
    executor.migrate([("generation", "0013_api_tokens")])
    with connection.cursor() as cursor:
        created = "timestamptz" if connection.vendor == "postgresql" else "datetime"
        cursor.execute(
            f"CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, created {created}, user_id int)"
        )
        cursor.execute(
            "INSERT INTO authtoken_token VALUES (%s, %s, %s)",
            ["a" * 40, timezone.now() - timedelta(days=9), user.pk],
        )
    try:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM authtoken_token")
            assert cursor.fetchone()[0] == 0
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE authtoken_token")
    row = ApiToken.objects.get(user=user)
    assert row.token_hash == hash_token("a" * 40) and row.created_at < timezone.now() - timedelta(days=8)
    assert works("a" * 40)
