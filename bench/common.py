"""Shared pieces of the benchmark scripts: a fresh database, a production server, percentiles."""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("T2I_BENCH_PG", "postgres://postgres@127.0.0.1:5432")
STATIC_ROOT = "/tmp/t2i_bench_static"


def bench_media() -> str:
    """Where benchmark runs store uploaded images: a temporary folder, never the project's media/."""
    if not os.environ.get("T2I_BENCH_MEDIA"):
        os.environ["T2I_BENCH_MEDIA"] = tempfile.mkdtemp(prefix="t2i-bench-media-")
    return os.environ["T2I_BENCH_MEDIA"]


def database_url(kind: str, name: str) -> str:
    """A fresh, empty database of `kind` ("postgres" or "sqlite") called `name`, after the prefix in
    T2I_BENCH_DB_PREFIX (so that runs from two checkouts at once do not drop each other's database)."""
    name = os.environ.get("T2I_BENCH_DB_PREFIX", "") + name
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
        "MEDIA_ROOT": bench_media(),
        "STATIC_ROOT": STATIC_ROOT,  # collected by collect_static(), as a deployment does
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


def staff_api_token(username: str) -> str:
    """A new staff user's REST API token (after setup_django): what the benchmarks' submitters use."""
    from django.contrib.auth.models import User

    from generation.services import api_token_create

    return api_token_create(user=User.objects.create_user(username, is_staff=True), name="benchmark")[1]


def collect_static() -> None:
    """The pages need the static files' manifest (DEBUG off): collect them once into STATIC_ROOT."""
    from django.core.management import call_command

    call_command("collectstatic", interactive=False, verbosity=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The scheduler under gunicorn, started as the README tells a deployment to: with
    t2i_project/gunicorn.conf.py (uvicorn workers, ASGI), its address and size given as flags. With `threads`,
    the WSGI application under threaded workers instead (gthread, the configuration before the scale work), as
    the reference design (bench.reference) needs; `app`, another ASGI application (the reference's own)."""

    health = ("/healthz", 200)  # the page and status that say the server is up

    def __init__(
        self,
        db_url: str,
        *,
        processes: int = 2,
        threads: int | None = None,
        log: Path | None = None,
        app: str | None = None,
        **extra: str,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "ab") if log else None  # noqa: SIM115 (closed in stop())
        cmd = [
            sys.executable, "-m", "gunicorn", "-c", "t2i_project/gunicorn.conf.py",
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(processes), "--log-level", "warning",
        ]  # fmt: skip
        if threads:
            cmd += ["--worker-class", "gthread", "--threads", str(threads), "t2i_project.wsgi"]
        elif app:
            cmd.append(app)  # another ASGI application under the same configuration
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=bench_env(db_url, **extra), stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}{self.health[0]}", timeout=2).status_code == self.health[1]:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start (settings {extra.get('DJANGO_SETTINGS_MODULE')})")

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes (the master only supervises them)."""
        import psutil

        try:
            return [child.pid for child in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU the scheduler's processes (master and workers) have used so far."""
        import psutil

        total = 0.0
        for pid in [self.proc.pid, *self.worker_pids()]:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def peak_rss_mb(self) -> float:
        """The highest peak RSS of any one scheduler (gunicorn worker) process so far, in MB."""
        return max((peak_rss_mb(pid) for pid in self.worker_pids()), default=float("nan"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.log:
            self.log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of a live process (Linux VmHWM), in MB; NaN when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_mb(pid: int) -> float:
    """Current resident set size of a process, in MB."""
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        return float("nan")


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


def add_suite_arguments(parser) -> None:
    """The server configuration and the figures file, as a suite run by `python -m bench` takes them."""
    parser.add_argument("--processes", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument(
        "--threads", type=int, default=0, help="0: ASGI (production); N: the WSGI app, gthread with N threads"
    )
    parser.add_argument("--server-log", type=Path, help="the server's log (default: the terminal)")
    parser.add_argument("--json", type=Path, help="write the figures here (used by python -m bench)")


def save_figures(path: Path | None, figures: list) -> None:
    """Write a suite's figures where `python -m bench` reads them (nothing when `path` is None)."""
    if path is not None:
        path.write_text(json.dumps({"figures": [f.as_dict() for f in figures], "series": []}))
