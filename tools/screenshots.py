"""Screenshots of the farm for the README: `python -m tools.screenshots` (or `make screenshots`).

Starts the scheduler on a fresh temporary SQLite database with a demo farm in it (tools/demo_farm.py), on
127.0.0.1 with DEBUG off, and photographs the home page, a task page, the gallery, the console's worker list
and the farm dashboard at 1280 px and 390 px wide with headless Debian Chromium (`apt-get install
chromium`; never `playwright install`). Writes docs/screenshots/<page>-<width>.png, palette-reduced so that
the set stays small.
"""

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
CHROMIUM = os.environ.get("T2I_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
VIEWPORTS = [(1280, 800), (390, 844)]  # desktop, phone
HEIGHT_CAP = 1600  # px of page per shot: enough to show the page, small enough to keep the files small


def _set_up_django(workdir: str) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "t2i_project.settings",
            "T2I_ENV_FILE": "",
            "DEBUG": "0",
            "SECRET_KEY": "screenshots-only-not-a-secret-0123456789abcdef",
            "DATABASE_URL": f"sqlite:///{workdir}/demo.sqlite3",
            "MEDIA_ROOT": f"{workdir}/media",
            "STATIC_ROOT": f"{workdir}/static",
            "ALLOWED_HOSTS": "127.0.0.1",
            "SESSION_COOKIE_SECURE": "0",
            "CSRF_COOKIE_SECURE": "0",
            "LOG_LEVEL": "WARNING",
            "T2I_LISTEN_NOTIFY": "0",
        }
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def _serve() -> tuple[str, object]:
    """The site on a free loopback port, in a thread (Django's threaded development server core)."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=False)
    server.set_app(WSGIHandler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def _shrink(path: Path) -> None:
    """A 64-colour palette: the pages are flat colours, so they stay legible at a fraction of the size."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def take(base_url: str, farm, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    from tools.demo_farm import PASSWORD

    task = farm.completed[0]
    pages = [
        ("home", "/"),
        ("task", f"/tasks/{task.public_id}/"),
        ("gallery", "/gallery/"),
        ("console-workers", "/admin/workers_app/worker/"),
        ("dashboard", "/admin/generation/task/dashboard/"),
    ]
    written = []
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        for width, height in VIEWPORTS:
            phone = width < 600  # a touch screen: no hover, no keyboard shortcut hint
            context = browser.new_context(
                viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone
            )
            page = context.new_page()
            page.goto(base_url + "/accounts/login/")
            page.fill("#id_username", farm.staff.username)
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            for name, path in pages:
                page.goto(base_url + path)
                page.wait_for_load_state("load")
                full = page.evaluate("() => document.documentElement.scrollHeight")
                target = out / f"{name}-{width}.png"
                page.screenshot(
                    path=str(target),
                    clip={"x": 0, "y": 0, "width": width, "height": min(full, HEIGHT_CAP)},
                    full_page=True,
                )
                _shrink(target)
                written.append(target)
            context.close()
        browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNG files (docs/screenshots/)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="t2i-screenshots-") as workdir:
        _set_up_django(workdir)
        from django.core.management import call_command

        from tools.demo_farm import seed_demo_farm

        call_command("migrate", verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        farm = seed_demo_farm()
        base_url, server = _serve()
        try:
            written = take(base_url, farm, args.out)
        finally:
            server.shutdown()
    total = sum(p.stat().st_size for p in written)
    for path in written:
        print(f"{path}  {path.stat().st_size / 1024:.0f} KB")
    print(f"{len(written)} screenshots, {total / 1024:.0f} KB in all")


if __name__ == "__main__":
    main()
