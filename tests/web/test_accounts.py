"""Log in, log out and sign up (switched off by T2I_SIGNUP_ENABLED=false)."""

from http import HTTPStatus

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_login_page_and_login(client, user):
    page = client.get(reverse("web:login"))
    assert page.status_code == HTTPStatus.OK
    assert reverse("web:signup") in page.content.decode()
    response = client.post(
        reverse("web:login"),
        {"username": "alice", "password": "pw-alice-123", "next": reverse("web:gallery")},
    )
    assert response.status_code == HTTPStatus.FOUND and response["Location"] == reverse("web:gallery")
    assert client.get(reverse("web:queue")).status_code == HTTPStatus.OK


def test_wrong_password_is_an_error(client, user):
    response = client.post(reverse("web:login"), {"username": "alice", "password": "nope"})
    assert response.status_code == HTTPStatus.OK
    assert "Please enter a correct username and password" in response.content.decode()


def test_logout_is_a_post(alice):
    response = alice.post(reverse("web:logout"))
    assert response.status_code == HTTPStatus.FOUND
    assert alice.get(reverse("web:queue")).status_code == HTTPStatus.FOUND


def test_sign_up_creates_and_logs_in(client):
    response = client.post(
        reverse("web:signup"),
        {"username": "carol", "password1": "a-long-passphrase-9", "password2": "a-long-passphrase-9"},
    )
    assert response.status_code == HTTPStatus.FOUND
    assert get_user_model().objects.filter(username="carol").exists()
    assert client.get(reverse("web:queue")).status_code == HTTPStatus.OK


def test_sign_up_errors(client):
    response = client.post(
        reverse("web:signup"), {"username": "carol", "password1": "abc", "password2": "abd"}
    )
    assert response.status_code == HTTPStatus.OK
    assert "password2" in response.context["form"].errors
    assert not get_user_model().objects.filter(username="carol").exists()


def test_sign_up_switched_off(client, settings):
    settings.T2I = {**settings.T2I, "SIGNUP_ENABLED": False}
    assert client.get(reverse("web:signup")).status_code == HTTPStatus.NOT_FOUND
    response = client.post(
        reverse("web:signup"),
        {"username": "carol", "password1": "a-long-passphrase-9", "password2": "a-long-passphrase-9"},
    )
    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not get_user_model().objects.filter(username="carol").exists()
    assert reverse("web:signup") not in client.get(reverse("web:login")).content.decode()


def test_sign_up_short_password_error_is_on_password_and_nothing_is_cleared(client):
    response = client.post(
        reverse("web:signup"), {"username": "carol", "password1": "abc", "password2": "abc"}
    )
    assert response.status_code == HTTPStatus.OK
    form = response.context["form"]
    assert any("too short" in error for error in form.errors["password1"])
    assert "password2" not in form.errors
    html = response.content.decode()
    assert 'name="password1" value="abc"' in html and 'name="password2" value="abc"' in html
    assert 'name="username" value="carol"' in html
    assert "no-store" in response["Cache-Control"]  # the page holds the passwords: never cached
    assert not get_user_model().objects.filter(username="carol").exists()
