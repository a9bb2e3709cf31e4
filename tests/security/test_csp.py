"""Content-Security-Policy (django-csp, SECURITY.md "Browsers"): every page, the admin and the API docs send
it, scripts come only from this server (no inline script, no inline event handler), and in a real browser
none of those pages reports a violation while its scripts still run."""

import re
from http import HTTPStatus

import pytest
from django.db import DEFAULT_DB_ALIAS, connections
from django.urls import reverse

from tests.factories import api_token_for
from tests.web.conftest import completed
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS, _browser_or_skip

pytestmark = pytest.mark.django_db

INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>\s*\S", re.I)
INLINE_HANDLER = re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.I)


def directives(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


def site_pages(user, worker) -> list[str]:
    """The site's pages, with a completed task of `user` and its image (a real PNG) for theirs."""
    task = completed(user, worker)
    image = task.images.get()
    return [
        reverse("web:generate"),
        reverse("web:gallery"),
        reverse("web:queue"),
        reverse("web:task", kwargs={"task_id": task.public_id}),
        reverse("web:image", kwargs={"image_id": image.public_id}),
        reverse("web:api-tokens"),
        reverse("web:legacy"),
    ]


ADMIN_PAGES = [
    "/admin/",
    "/admin/generation/task/",
    "/admin/generation/task/dashboard/",
    "/admin/generation/workflowtemplate/",
    "/admin/generation/workflowtemplate/add/",
    "/admin/workers_app/worker/",
    "/admin/auth/user/",
]


def test_every_page_the_admin_and_the_api_docs_send_a_policy_without_inline_scripts(client, staff, worker):
    client.force_login(staff)
    pages = [*site_pages(staff, worker), *ADMIN_PAGES, reverse("api-docs"), reverse("api-docs") + "?script="]
    anonymous = [reverse("web:login"), reverse("web:signup")]
    for path in pages + anonymous:
        response = (client if path not in anonymous else type(client)()).get(path)
        assert response.status_code == HTTPStatus.OK, path
        policy = directives(response)
        assert policy["script-src"] == ["'self'"], path  # no 'unsafe-inline', no 'unsafe-eval'
        assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
        assert policy["default-src"] == ["'self'"]
        if response["Content-Type"].startswith("text/html"):
            html = response.content.decode()
            assert not INLINE_SCRIPT.search(html), (path, INLINE_SCRIPT.search(html).group(0))
            assert not INLINE_HANDLER.search(html), (path, INLINE_HANDLER.search(html).group(0))


def test_the_api_sends_the_policy_too(user):
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {api_token_for(user)}")
    assert directives(api.get("/api/v1/tasks/"))["default-src"] == ["'self'"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_no_page_reports_a_violation_in_a_real_browser(live_server, settings, monkeypatch, staff, worker):
    """Chromium reports every blocked script or style on the console; none may appear, and the scripts that
    must run do (the generate page's size switch, Swagger UI drawing the API). Pages with a policy violation
    before this change (an inline script: the API docs) fail here."""
    sync_playwright = _browser_or_skip()
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    monkeypatch.setitem(connections.settings[DEFAULT_DB_ALIAS], "CONN_MAX_AGE", 0)
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    from django.test import Client

    pages = [*site_pages(staff, worker), *ADMIN_PAGES, reverse("api-docs")]
    login = Client()
    login.force_login(staff)
    session = login.cookies[settings.SESSION_COOKIE_NAME].value
    violations: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context()
            context.add_cookies(
                [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
            )
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.on(
                "console",
                lambda m: (
                    violations.append(f"{page.url}: {m.text}")
                    if "Content Security Policy" in m.text or "Content-Security-Policy" in m.text
                    else None
                ),
            )
            for path in pages:
                page.goto(live_server.url + path, wait_until="networkidle")
            page.goto(live_server.url + reverse("api-docs"), wait_until="networkidle")
            page.wait_for_selector(".swagger-ui .info .title")  # Swagger UI's script ran
            page.goto(live_server.url + reverse("web:generate"), wait_until="networkidle")
            assert page.is_hidden("[data-custom-size]")  # generate.js ran: custom size fields hidden...
            page.click("label[for=id_size_5]")  # "Custom"
            assert page.is_visible("[data-custom-size]")  # ... until "Custom" is chosen
        finally:
            browser.close()
    assert violations == []
