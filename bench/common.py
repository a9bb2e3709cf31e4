"""Shared pieces of the benchmark scripts: a fresh database, a production server, percentiles."""

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("T2I_BENCH_PG", "postgres://postgres@127.0.0.1:5432")


def database_url(kind: str, name: str) -> str:
    """A fresh, empty database of `kind` ("postgres" or "sqlite") called `name`."""
    if kind == "postgres":
        import psycopg

        with psycopg.connect(f"{PG_ADMIN_URL}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{PG_ADMIN_URL}/{name}"
    path = Path("/tmp") / f"{name}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"


def bench_env(db_url: str, **extra: str) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "DEBUG": "0",
        "SECRET_KEY": "bench-secret-key-not-for-production-use-0123456789",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SETTINGS_MODULE": "t2i_project.settings",
        "LOG_LEVEL": "WARNING",
        "T2I_SUBMIT_RATE": "1000000/min",
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
    }
    env.update(extra)
    return env


def setup_django(db_url: str, **extra: str) -> None:
    """Configure Django in this process against `db_url` and migrate it."""
    os.environ.update(bench_env(db_url, **extra))
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The scheduler under gunicorn with threaded workers (the production setup)."""

    def __init__(self, db_url: str, *, processes: int = 2, threads: int = 32, **extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "gunicorn", "t2i_project.wsgi",
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(processes), "--threads", str(threads),
            "--worker-class", "gthread", "--log-level", "warning", "--timeout", "120",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=bench_env(db_url, **extra))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/api/schema/", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the scheduler did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"
