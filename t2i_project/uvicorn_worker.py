"""The gunicorn worker class of the scheduler (t2i_project/gunicorn.conf.py): uvicorn serving the ASGI app."""

from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    # uvloop and httptools where installed; no lifespan messages (Django's ASGI handler serves HTTP only).
    # No proxy headers: uvicorn would otherwise take the client address from X-Forwarded-For on connections
    # from 127.0.0.1 (gunicorn's forwarded_allow_ips); T2I_TRUSTED_PROXIES is the one rule that decides it
    # (generation.client_address).
    CONFIG_KWARGS = {"loop": "auto", "http": "auto", "lifespan": "off", "proxy_headers": False}
