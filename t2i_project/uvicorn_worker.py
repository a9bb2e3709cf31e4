"""The gunicorn worker class of the scheduler (t2i_project/gunicorn.conf.py): uvicorn serving the ASGI app."""

from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    # uvloop and httptools where installed; no lifespan messages (Django's ASGI handler serves HTTP only).
    CONFIG_KWARGS = {"loop": "auto", "http": "auto", "lifespan": "off"}
