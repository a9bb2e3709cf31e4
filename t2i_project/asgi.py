"""ASGI entry point: `gunicorn -c t2i_project/gunicorn.conf.py` (uvicorn workers) and `manage.py runserver`
(Daphne's) serve the scheduler through it."""

import os

import django
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "t2i_project.settings")
django.setup(set_prefix=False)

from workers_app.long_poll import on_shared_thread  # noqa: E402 (needs the apps loaded)


class Handler(ASGIHandler):
    """Django's ASGI handler, but long polls and short worker calls share one thread per process.

    Django gives every request a thread of its own for its synchronous parts, kept until the request ends:
    a worker's lease wait would hold one for up to a minute. Outside that per-request context asgiref runs
    them on its single shared thread, so hundreds of waits cost no thread at all, and a heartbeat or a
    progress report does not make and join a thread (workers_app.long_poll.on_shared_thread)."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and on_shared_thread(scope["path"]):
            await self.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


application = Handler()
