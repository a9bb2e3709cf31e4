"""The layout in a real browser (headless Debian Chromium through Playwright, like test_browser.py): the
console's lists fit 1280 px, the menu button on a phone, the site's own 404 with DEBUG off.

The farm is tools/demo_farm.py's (the one in the README's screenshots), served by pytest-django's live
server. Chromium missing: skipped locally, a failure under CI=true.
"""

import pytest
from django.conf import settings as django_settings

from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS, _browser_or_skip
from tools.demo_farm import PASSWORD, seed_demo_farm

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# The columns an operator must see without scrolling (issue 17): header text as the list shows it.
WORKER_COLUMNS = ["Name", "Status", "Working on", "Done today", "Median run", "Fail rate", "Skew"]
TASK_COLUMNS = ["Task", "Status", "Worker", "Checkpoint", "Created", "Wait", "Run", "Progress"]


@pytest.fixture
def browser(live_server, settings, monkeypatch):
    sync_playwright = _browser_or_skip()
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's event loop runs in this thread
    settings.SESSION_COOKIE_SECURE = False  # the live server speaks plain HTTP
    settings.CSRF_COOKIE_SECURE = False
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def farm(db):
    return seed_demo_farm()


def log_in(page, base_url: str, username: str) -> None:
    page.goto(base_url + "/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(base_url + "/")


def visible_columns(page) -> dict[str, dict]:
    """Each header of the result list: its text, and whether it lies wholly inside the viewport and inside
    the list's scroll box (Django's `.results` scrolls sideways and would hide what does not fit)."""
    return page.evaluate(
        """() => {
            const box = document.querySelector('.results').getBoundingClientRect();
            const out = {};
            for (const th of document.querySelectorAll('#result_list thead th')) {
                const r = th.getBoundingClientRect();
                out[th.innerText.trim().toLowerCase()] = {
                    inside: r.left >= 0 && r.right <= Math.min(window.innerWidth, box.right + 0.5),
                    right: r.right,
                };
            }
            return out;
        }"""
    )


def test_console_lists_show_their_important_columns_at_1280(browser, live_server, farm):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    log_in(page, live_server.url, farm.staff.username)
    for path, wanted in (
        ("/admin/workers_app/worker/", WORKER_COLUMNS),
        ("/admin/generation/task/", TASK_COLUMNS),
    ):
        page.goto(live_server.url + path)
        assert page.locator("#nav-sidebar").is_hidden(), "the sidebar starts closed"
        columns = visible_columns(page)
        for name in wanted:
            assert name.lower() in columns, f"{path}: no column {name!r} in {sorted(columns)}"
            assert columns[name.lower()]["inside"], f"{path}: column {name!r} is cut: {columns[name.lower()]}"
        assert page.evaluate(
            "() => { const r = document.querySelector('.results'); return r.scrollWidth <= r.clientWidth; }"
        ), f"{path}: the list scrolls sideways"
    # Opening the sidebar is remembered, as Django's own script does.
    page.click("#toggle-nav-sidebar")
    page.reload()
    assert page.locator("#nav-sidebar").is_visible()


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_phone_gets_a_menu_button_instead_of_a_wrapped_navigation(browser, live_server, farm, javascript):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, java_script_enabled=javascript
    )
    page = context.new_page()
    log_in(page, live_server.url, farm.user.username)
    gallery = page.locator("nav >> text=Gallery")
    button = page.locator("label.menu-button")
    assert button.is_visible() and gallery.is_hidden()
    assert page.locator(".site-header").bounding_box()["height"] < 80  # one line: the mark and the button
    assert page.locator(".shortcut-hint").is_hidden()  # no Ctrl + Enter on a touch screen
    button.click()
    assert gallery.is_visible() and page.locator("header form button:has-text('Log out')").is_visible()
    gallery.click()
    page.wait_for_url(live_server.url + "/gallery/")
    # The task page's image uses the screen's width.
    page.goto(live_server.url + f"/tasks/{farm.completed[1].public_id}/")
    image = page.locator(".task-image img").bounding_box()
    assert image["width"] >= 390 - 2 * 40


def test_desktop_shows_the_navigation_and_the_shortcut(browser, live_server, farm):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    log_in(page, live_server.url, farm.staff.username)
    assert page.locator("label.menu-button").is_hidden()
    assert page.locator("nav >> text=Gallery").is_visible()
    assert page.locator("nav >> text=Console").is_visible()  # staff
    assert page.locator(".shortcut-hint").is_visible()


def test_missing_page_is_the_sites_own_404(browser, live_server):
    assert not django_settings.DEBUG
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    response = page.goto(live_server.url + "/no-such-page/")
    assert response.status == 404
    assert page.locator("h1").inner_text() == "This page does not exist"
    assert page.locator("header .brand").is_visible()  # the site's frame, not Django's debug page
    assert "URLconf" not in page.content()
