"""Nothing comes from the internet: the API docs are served from here (Redoc, whose bundle loads its logo
from a CDN, leads to them); the site's icon is linked from its pages and answers at /favicon.ico."""

import re
from http import HTTPStatus

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse

pytestmark = pytest.mark.django_db

URL_ATTRIBUTE = re.compile(r"""(?:src|href|action)\s*=\s*["']([^"']*)["']""")


def external_urls(html: str) -> list[str]:
    """URLs the page would load or link beyond this server: absolute or scheme-relative, in attributes or
    anywhere in the text (scripts, styles)."""
    linked = [url for url in URL_ATTRIBUTE.findall(html) if re.match(r"(?i)(https?:)?//", url)]
    written = re.findall(r"(?i)\bhttps?://[^\s\"'<>)]+", html)
    return [url for url in linked + written if not re.match(r"(?i)(https?:)?//testserver\b", url)]


@pytest.mark.parametrize("url", ["/api/docs/", "/accounts/login/"])
def test_pages_load_nothing_from_the_internet(client, url):
    response = client.get(url)
    assert response.status_code == HTTPStatus.OK
    assert external_urls(response.content.decode()) == []


def test_external_urls_would_be_found():
    html = '<link href="https://fonts.googleapis.com/css"><script src="//cdn.example/x.js"></script>'
    assert external_urls(html + "fetch('http://validator.swagger.io/')") != []


def test_api_docs_have_no_online_validator(client):
    # Swagger UI's settings are in its start-up script, served as a file of its own (CSP: no inline script).
    assert '"validatorUrl": null' in client.get("/api/docs/?script=").content.decode()


def test_redoc_leads_to_the_api_docs(client):
    response = client.get("/api/redoc/")
    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"] == reverse("api-docs")


def test_favicon_ico_is_the_sites_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"].endswith("img/favicon.svg")
    assert finders.find("img/favicon.svg") is not None
    assert '<link rel="icon" href="/favicon.ico">' in client.get("/api/docs/").content.decode()


def test_pages_link_the_icon(client):
    html = client.get("/accounts/login/").content.decode()
    assert re.search(r'<link rel="icon" href="[^"]*img/favicon\.svg"', html)


def test_a_missing_page_is_the_sites_own_404(client, settings):
    settings.DEBUG = False
    response = client.get("/no-such-page/")
    assert response.status_code == HTTPStatus.NOT_FOUND
    assert "This page does not exist" in response.content.decode()
