"""Synchronous work from coroutines: a long poll or an event stream waits as a coroutine and does its database
work in short steps, each of which gives its connection back (to the pool) as soon as it is done."""

from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection


def step(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` as a coroutine on a thread, which gives its database connection back when done. Under ASGI
    the long poll and stream paths run these on the process's one shared thread (t2i_project.asgi); under
    WSGI or the test client, on the request's thread."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        finally:
            if not connection.in_atomic_block:  # (a test's transaction)
                connection.close()  # back to the pool: nothing is held while the request waits

    return sync_to_async(run)
