"""One end-to-end flow in a real browser (headless Debian Chromium, driven by Playwright) against a live
scheduler, the ComfyUI simulator and one worker daemon, all in threads of this process.

A screenshot of every page goes to test-artifacts/screenshots/. Chromium missing: skipped locally, a
failure under CI=true (install it with `apt-get install chromium`; never `playwright install`).
"""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.db import DEFAULT_DB_ALIAS, connections
from django.urls import reverse

from generation.models import Image, Task
from tests.conftest import submit_task
from workers_app import services as worker_services
from workers_app.daemon.worker import WorkerLoop, WorkerLoopConfig
from workers_app.simulator import SimulatorConfig, start_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("T2I_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "a-long-passphrase-9"


def _browser_or_skip():
    reason = ""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the playwright package is not installed (pip install -r requirements-dev.txt)"
    else:
        if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
            reason = f"Chromium is not at {CHROMIUM} (apt-get install chromium)"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Browser test cannot run under CI: {reason}.")
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture
def farm(live_server, settings, monkeypatch):
    """The live scheduler with the simulator and one worker daemon running against it."""
    # Each request thread of the live server closes its database connection when it ends (PostgreSQL
    # cannot drop the test database while persistent connections linger).
    monkeypatch.setitem(connections.settings[DEFAULT_DB_ALIAS], "CONN_MAX_AGE", 0)
    settings.SESSION_COOKIE_SECURE = False  # the live server speaks plain HTTP
    settings.CSRF_COOKIE_SECURE = False
    # One process: the in-process wake-up is enough, and no LISTEN connection outlives the test database.
    settings.T2I = {**settings.T2I, "HEARTBEAT_INTERVAL": 1.0, "LEASE_MAX_WAIT": 2.0, "LISTEN_NOTIFY": False}
    simulator = start_in_thread(SimulatorConfig(job_time=0.2, step_time=0.25, random_seed=7))
    _record, token = worker_services.worker_create(name="sim-gpu-1")
    worker = WorkerLoop(
        WorkerLoopConfig(
            scheduler_url=live_server.url,
            token=token,
            comfyui_url=simulator.url,
            name="sim-gpu-1",
            prefetch=1,
            lease_wait=1.0,
            prefetch_lease_wait=0.5,
            grace=2.0,
            interrupt_wait=2.0,
            backoff_initial=0.2,
            backoff_max=1.0,
        )
    )
    thread = threading.Thread(target=worker.run, name="worker-daemon", daemon=True)
    thread.start()
    try:
        yield simulator
    finally:
        worker.request_stop()
        thread.join(timeout=15)
        simulator.stop()


def wait_for(condition, *, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def image_loaded(page, selector: str, timeout_ms: float = 10_000) -> bool:
    """Whether the image `selector` names finished loading with pixels (a broken one finishes with none)."""
    script = "s => { const i = document.querySelector(s); return !!i && i.complete }"
    page.wait_for_function(script, arg=selector, timeout=timeout_ms)
    return page.evaluate("s => document.querySelector(s).naturalWidth", selector) > 0


def test_generate_watch_browse_reuse_cancel(farm, live_server, django_user_model, monkeypatch):
    sync_playwright = _browser_or_skip()
    # Playwright's sync API runs an event loop in this thread; the ORM checks below are still plain calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    alice = django_user_model.objects.create_user("alice", password=PASSWORD)
    bob = django_user_model.objects.create_user("bob", password=PASSWORD)
    wait_for(_worker_online, what="the worker to register")
    bobs_task = submit_task(bob, prompt="bob's private harbour", width=256, height=256, steps=2)
    bobs_image = wait_for(lambda: Image.objects.filter(task=bobs_task).first(), what="bob's image")

    def url(name: str, **kwargs) -> str:
        return live_server.url + reverse(name, kwargs=kwargs or None)

    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(20_000)

            def shot(name: str) -> None:
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

            # Sign in.
            page.goto(url("web:generate"))
            assert "Images from text" in page.inner_text("main")  # signed out: a welcome, not a bounce
            page.click("main >> text=Log in")
            page.wait_for_url("**/accounts/login/")
            shot("login")
            page.fill("#id_username", "alice")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]:has-text('Log in')")
            page.wait_for_url(url("web:generate"))
            assert page.get_attribute("nav a[aria-current=page]", "href") == reverse("web:generate")
            assert (
                page.locator("#id_checkpoint option", has_text="v1-5-pruned-emaonly.safetensors").count() == 1
            )

            # Submit a prompt; the task page follows the progress reports to 100 %.
            page.fill("#id_prompt", "a lighthouse on a cliff at dusk, oil painting")
            page.fill("#id_negative_prompt", "blurry")
            page.click("label[for=id_size_1]")  # 768 × 768
            assert page.is_checked("#id_size_1")
            page.fill("#id_steps", "12")
            page.fill("#id_seed", "1234")
            page.select_option("#id_preview_method", "auto")  # watch it form
            shot("generate")
            page.click("button[type=submit]:has-text('Generate')")
            page.wait_for_url("**/tasks/*/")
            task = Task.objects.get(owner=alice)
            bar = page.locator("[role=progressbar]")
            seen, taken, previewed = set(), set(), []
            preview = "img.live-preview:not([hidden])"

            def progress_done() -> bool:
                seen.add(int(bar.get_attribute("aria-valuenow") or 0))
                if not previewed and page.locator(preview).count():
                    previewed.append(page.evaluate("s => document.querySelector(s).naturalWidth", preview))
                if 0 < max(seen) < 100 and "running" not in taken:
                    taken.add("running")
                    shot("task-running")
                return page.locator(".badge-completed").count() > 0

            wait_for(progress_done, timeout=30, what="the task to complete in the browser")
            assert any(0 < value < 100 for value in seen), f"the bar never moved between 0 and 100: {seen}"
            assert previewed == [96], previewed  # the sampler's latent preview (768 / 8) showed while it ran
            assert page.locator(preview).count() == 0  # and gave way to the image
            assert bar.get_attribute("aria-valuenow") == "100"
            page.locator(".task-image img").first.wait_for()
            assert (
                page.locator(".task-image img")
                .first.get_attribute("alt")
                .startswith("a lighthouse on a cliff")
            )
            assert "sim-gpu-1" in page.inner_text(".facts")
            image = Image.objects.get(task=task)
            assert image_loaded(page, ".task-image img")
            shot("task-completed")

            # The gallery shows it (and not bob's); its page has every parameter and the original to download.
            page.click("nav >> text=Gallery")
            page.wait_for_url(url("web:gallery"))
            thumbs = page.locator(".thumb-grid .thumb img")
            assert thumbs.count() == 1
            assert image_loaded(page, ".thumb-grid img")
            shot("gallery")
            thumbs.first.click()
            page.wait_for_url(url("web:image", image_id=image.public_id))
            text = page.inner_text("main")
            for expected in (
                "1234",
                "768 × 768",
                "12",
                "euler",
                "v1-5-pruned-emaonly.safetensors",
                "sim-gpu-1",
            ):
                assert expected in text
            with page.expect_download() as download:
                page.click("text=Download original")
            assert download.value.suggested_filename == f"{task.public_id}_0.png"
            shot("image")

            # Reuse the settings: the generate form comes back filled in.
            page.click("text=Use these settings")
            page.wait_for_url("**/?*")
            assert page.input_value("#id_prompt") == "a lighthouse on a cliff at dusk, oil painting"
            assert page.input_value("#id_seed") == "1234"
            assert page.is_checked("#id_size_1")

            # A second, slow task: cancel it from My queue.
            farm.set_faults(step_time=3.0)
            page.fill("#id_prompt", "a slow study of clouds")
            page.fill("#id_seed", "")
            page.click("button[type=submit]:has-text('Generate')")
            page.wait_for_url("**/tasks/*/")
            slow = Task.objects.get(owner=alice, prompt="a slow study of clouds")
            page.click("nav >> text=My queue")
            page.wait_for_url(url("web:queue"))
            wait_for(
                lambda: page.locator(".queue-item .badge-running").count() > 0, what="the slow task to start"
            )
            shot("queue")
            page.click(".queue-item button:has-text('Cancel')")
            page.wait_for_url(url("web:queue"))
            assert "The task was cancelled." in page.inner_text(".messages")
            slow.refresh_from_db()
            assert slow.status == Task.Status.CANCELLED
            shot("queue-after-cancel")
            farm.set_faults(step_time=0.05)

            # Bob's image: alice can neither see it nor delete it.
            response = page.request.get(url("web:image", image_id=bobs_image.public_id))
            assert response.status == 404
            csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
            response = page.request.post(
                url("web:image-delete", image_id=bobs_image.public_id),
                headers={"X-CSRFToken": csrf, "Referer": live_server.url + "/"},
            )
            assert response.status == 404
            assert Image.objects.filter(pk=bobs_image.pk).exists()
            assert default_storage.exists(bobs_image.file.name)

            # The original one-box page still works end to end.
            page.goto(url("web:legacy"))
            page.fill("#legacy-prompt", "a red fox in the snow, watercolour")
            page.click("#legacy-submit")
            page.locator("#legacy-result:not([hidden]) img").wait_for(timeout=30_000)
            assert image_loaded(page, "#legacy-image")
            shot("legacy")

            page.goto(url("web:task", task_id=task.public_id))
            shot("task-page")
            page.goto(live_server.url + "/tasks/00000000-0000-0000-0000-000000000000/")
            shot("not-found")
            page.click("header form button:has-text('Log out')")
            page.goto(url("web:signup"))
            shot("signup")
            browser.close()
        finally:
            # The ORM calls in this block ran in Playwright's greenlet, on connections of their own.
            connections.close_all()


def _worker_online() -> bool:
    from workers_app.models import Worker

    return Worker.objects.filter(status__in=["idle", "busy"]).exists()
