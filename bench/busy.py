"""A busy farm: N simulated `runworker` daemons running J-second jobs back to back, and what each completed
task costs the scheduler and PostgreSQL.

    python -m bench.busy                                    # 200 workers x 10 s jobs (20 tasks/s), 120 s
    python -m bench.busy --workers 50 --job-seconds 5 --duration 40
    python -m bench.busy --daemon-protocol 2                # the previous release's daemons (HTTP only)

One asyncio process simulates N daemons with exactly the requests a working `manage.py runworker` sends
(workers_app/daemon/worker.py and runner.py, their default settings; docs/worker-api.md, protocol 3):
register; `POST lease` until it holds 2 tasks (prefetch depth 2: one running in ComfyUI, one queued behind
it), with `wait=20` while it holds nothing and `prefetch: true`, `wait=3` while a task runs, asking for the
second when the running one is expected to end within the prefetch lead (4 x its recent prefetch answers'
median, failures included, 0.25 to 30 s; the pace known from the second progress report); for each task
`start` when ComfyUI begins it, `progress` at most once a second (the start counts as one) over a 20-step
sampler spread over the job, then `complete` with a PNG of the task's size, asking for the next lease in the
same answer (`lease_next=true`, `prefetch=true` while it holds another task); a heartbeat every 5 s with
every lease it holds (protocol 2 skips it only while it holds nothing and a lease wait is open;
`--daemon-protocol 1` never skips it). Protocol 3 sends start, progress and heartbeats on the worker socket
(one WebSocket per daemon, as runworker's WorkerSocket: one call at a time, opened afresh after 30 s idle),
the other calls over HTTP. Each daemon's ComfyUI runs one prompt at a time, J seconds each, in
the order they were queued. Failed calls are retried as runworker retries them. A feeder submits through the
REST API (a staff user's token): the whole run's worth of tasks at the ideal rate before the daemons start,
then one more for each taken, so that the queue never runs dry. A probe reads a running task's status every
second.

Prints, over the measured window after the warm-up: tasks completed per second against the ideal N/J,
errors (any answer but 2xx, and requests that failed), status read p50/p99, the requests per task, and the
CPU per completed task of the scheduler (every gunicorn process), PostgreSQL and this generator. The
scheduler runs under its production configuration (gunicorn, t2i_project/gunicorn.conf.py) on a fresh
PostgreSQL database. Nothing here is tuned for the benchmark: the intervals, waits and retries are
runworker's defaults, read from its code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import signal
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

from bench.common import (
    Server,
    add_suite_arguments,
    database_url,
    pct,
    save_figures,
    setup_django,
    staff_api_token,
)
from bench.lease import NODES, make_workers, postgres_cpu, since
from bench.scale import HEARTBEAT_EVERY, LEASE_WAIT, png
from workers_app.daemon.runner import RunnerSettings
from workers_app.daemon.scheduler import PROTOCOL_VERSION
from workers_app.daemon.worker import PREFETCH_SAMPLES, WorkerLoopConfig, prefetch_lead
from workers_app.daemon.worker_socket import IDLE_SECONDS as SOCKET_IDLE_SECONDS
from workers_app.daemon.worker_socket import RETRY_SECONDS as SOCKET_RETRY_SECONDS

RUNNER = RunnerSettings()  # runworker's task runner: progress every 1 s, upload attempts and their delays
# runworker's loop: prefetch 2, 3 s lease waits while a task runs, 20 s when idle (bench.scale), backoff
LOOP = WorkerLoopConfig(scheduler_url="", token="")
CALL_TIMEOUT = 15.0  # SchedulerClient's timeout; a lease call adds its wait, a completion gets 60 s
COMPLETE_TIMEOUT = 60.0
FAILOVER_STATUSES = frozenset({502, 503, 504})  # with a connection error or a timeout: move to the next URL
STEPS = 20  # sampler steps of the submitted tasks; ComfyUI reports progress after each one
SIZE = 64  # the tasks' width and height (the smallest the farm accepts): a tiny PNG per completion
FEED_CONCURRENCY = 16  # submits in flight at most


def task_body(prompt: str) -> dict:
    return {"prompt": prompt, "width": SIZE, "height": SIZE, "steps": STEPS, "template": "noise-test"}


# --- what the simulated daemons saw ----------------------------------------------------------------------


class Stats:
    """Answers, errors and completions of every simulated daemon, the feeder and the probe."""

    def __init__(self) -> None:
        self.leased: set[str] = set()  # every task a lease answer carried, since the start
        self.completed: list[tuple[float, str]] = []  # (when the answer came, task id), since the start
        self.reset()

    def reset(self) -> None:
        """Start the measured window: counters and latencies from now on."""
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.failovers = 0
        self.lost = 0
        self.carried = 0  # completions whose answer carried the next lease

    def answered(self, call: str, seconds: float) -> None:
        self.requests[call] += 1
        self.latency[call].append(seconds)

    def error(self, what: str) -> None:
        self.errors[what] += 1

    def error_total(self) -> int:
        return sum(self.errors.values())

    def detail(self) -> str:
        return ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items()))


class Unavailable(Exception):
    """A connection error, a timeout or a 5xx (429 too): runworker's SchedulerUnavailable, retried later."""


class Refused(Exception):
    """A 4xx answer: `code` is the error's code (register_required, lease_lost, ...)."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"{status} {code}")
        self.status, self.code = status, code


class SchedulerCalls:
    """One daemon's SchedulerClient: its token and protocol header on every call; calls stick to one URL and
    move to the next after a connection error, a timeout or a 502/503/504 (runworker's failover), so that
    the caller's retry goes there."""

    def __init__(self, session, urls: list[str], token: str, protocol: int, stats: Stats) -> None:
        self.session, self.urls, self.stats = session, urls, stats
        self.current = 0
        self.protocol = protocol
        self.headers = {"Authorization": f"Bearer {token}", "T2I-Protocol": str(protocol)}
        self.socket = None  # protocol 3: the worker socket, opened on the first call (WorkerSocket)
        self.socket_url = ""
        self.socket_used_at = 0.0
        self.socket_down_until = 0.0
        self.socket_lock = asyncio.Lock()
        self.next_id = 0

    @property
    def url(self) -> str:
        return self.urls[self.current]

    async def post(
        self, path: str, *, json_body=None, data=None, timeout: float = CALL_TIMEOUT, name: str = ""
    ) -> dict | None:
        """The answer's JSON (None for a 204); raises Unavailable or Refused. `name`: the call's name in the
        figures (default: the path's last part)."""
        import aiohttp

        index = self.current
        call = name or path.rsplit("/", 1)[-1]
        t0 = time.monotonic()
        try:
            async with self.session.post(
                f"{self.urls[index]}/api/v1/worker/{path}",
                json=json_body,
                data=data,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as r:
                status, body = r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.error(f"{call} {type(exc).__name__}")
            self.fail_over(index)
            raise Unavailable(call) from exc
        if status in FAILOVER_STATUSES:
            self.fail_over(index)
        if status >= 400:
            code = error_code(body)
            self.stats.error(f"{call} HTTP {status} {code}")
            if status >= 500 or status == 429:
                raise Unavailable(call)
            raise Refused(status, code)
        self.stats.answered(f"{call} 204" if status == 204 else call, time.monotonic() - t0)
        return json.loads(body) if status != 204 and body else None

    async def report(self, op: str, path: str, body: dict, *, task_id: str = "") -> dict | None:
        """SchedulerClient._socket_post: `op` on the worker socket (protocol 3, as daemon/worker_socket.py:
        opened on first use, afresh after IDLE_SECONDS, once more when a reused one fails, HTTP for
        RETRY_SECONDS when it cannot be opened), else `POST path`."""
        if self.protocol >= 3 and time.monotonic() >= self.socket_down_until:
            message = {"op": op, **({"task_id": task_id} if task_id else {}), **body}
            async with self.socket_lock:
                answer = await self._socket_call(message)
            if answer is not None:
                return self._answer(f"{op} (socket)", *answer)
        return await self.post(path, json_body=body)

    async def _socket_call(self, message: dict) -> tuple[int, dict | None, float] | None:
        import aiohttp

        url = f"{self.url.replace('http', 'ws', 1)}/api/v1/worker/socket"
        if self.socket is not None and (
            self.socket_url != url or time.monotonic() - self.socket_used_at > SOCKET_IDLE_SECONDS
        ):
            await self.socket.close()
            self.socket = None
        for _ in range(2):
            reused = self.socket is not None
            t0 = time.monotonic()
            try:
                if self.socket is None:
                    self.socket = await self.session.ws_connect(
                        url, headers=self.headers, timeout=aiohttp.ClientWSTimeout(ws_close=1), autoping=True
                    )
                    self.socket_url = url
                self.next_id += 1
                await self.socket.send_str(json.dumps({"id": self.next_id, **message}))
                while True:
                    answer = json.loads(await asyncio.wait_for(self.socket.receive_str(), CALL_TIMEOUT))
                    if answer.get("id") == self.next_id:
                        break
            except (aiohttp.ClientError, TimeoutError, TypeError, ValueError) as exc:
                self.stats.error(f"socket {type(exc).__name__}")
                if self.socket is not None:
                    await self.socket.close()
                    self.socket = None
                if reused:
                    continue
                self.socket_down_until = time.monotonic() + SOCKET_RETRY_SECONDS
                return None
            self.socket_used_at = time.monotonic()
            return int(answer["status"]), answer.get("body"), self.socket_used_at - t0
        self.socket_down_until = time.monotonic() + SOCKET_RETRY_SECONDS
        return None

    def _answer(self, call: str, status: int, body: dict | None, seconds: float) -> dict | None:
        if status in FAILOVER_STATUSES:
            self.fail_over(self.current)
        if status >= 400:
            code = str((body or {}).get("error", ""))
            self.stats.error(f"{call} {status} {code}")
            if status >= 500 or status == 429:
                raise Unavailable(call)
            raise Refused(status, code)
        self.stats.answered(call, seconds)
        return body

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()

    def fail_over(self, index: int) -> None:
        if len(self.urls) > 1 and self.current == index:
            self.current = (index + 1) % len(self.urls)
            self.stats.failovers += 1


def error_code(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        return ""


class Backoff:
    """runworker's capped exponential delays."""

    def __init__(self) -> None:
        self.delay = LOOP.backoff_initial

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, LOOP.backoff_max)
        return delay

    def reset(self) -> None:
        self.delay = LOOP.backoff_initial


@dataclass(eq=False)
class Job:
    """A task the daemon holds, with its turn on the daemon's ComfyUI."""

    lease: dict
    gpu_start: float
    gpu_end: float
    lost: bool = False  # the scheduler said the lease is no longer ours
    completed: bool = False
    start_reported: bool = False
    last_progress_at: float = 0.0
    prompt_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def task_id(self) -> str:
        return self.lease["task_id"]


class Daemon:
    """One simulated `runworker` with its ComfyUI (one GPU, `job_seconds` per prompt, queued in order)."""

    def __init__(self, calls: SchedulerCalls, name: str, job_seconds: float, protocol: int, stats: Stats):
        self.calls = calls
        self.name = name
        self.job_seconds = job_seconds
        self.protocol = protocol
        self.stats = stats
        self.backoff = Backoff()  # runworker's, shared by register and lease
        self.held: dict[str, Job] = {}  # runworker's active tasks
        self.changed = asyncio.Event()  # a task ended or a register is needed: the loop looks again
        self.gpu_free_at = 0.0
        self.lease_open = False
        self.need_register = True
        self.heartbeat_interval = HEARTBEAT_EVERY
        self.tasks: set[asyncio.Task] = set()
        self.prefetch_answers: deque[float] = deque(maxlen=PREFETCH_SAMPLES)

    async def run(self, delay: float = 0.0) -> None:
        """Start after `delay` seconds (a farm's daemons do not start in the same instant), then loop."""
        await asyncio.sleep(delay)
        beat = None
        try:
            while True:
                if self.need_register:
                    await self.register()
                    if beat is None and not self.need_register:
                        beat = asyncio.create_task(self.heartbeats())
                    continue
                await self.step()
        finally:
            for task in [*self.tasks, *([beat] if beat else [])]:
                task.cancel()

    async def register(self) -> None:
        body = {"name": self.name, "prefetch": LOOP.prefetch, "capabilities": {"node_classes": NODES}}
        try:
            answer = await self.calls.post("register", json_body=body)
        except (Unavailable, Refused):
            await asyncio.sleep(self.backoff.next())
            return
        self.need_register = False
        self.backoff.reset()
        self.heartbeat_interval = float((answer or {}).get("heartbeat_interval") or HEARTBEAT_EVERY)

    async def step(self) -> None:
        """WorkerLoop.step: lease while there is room, else wait for a change."""
        if len(self.held) >= LOOP.prefetch:
            self.changed.clear()
            await self.changed.wait()
            return
        due = self.prefetch_due_at()
        if due > time.monotonic():
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), due - time.monotonic())
            return
        prefetch = bool(self.held)
        wait = LOOP.prefetch_lease_wait if prefetch else LEASE_WAIT
        asked = time.monotonic()
        self.lease_open = True
        try:
            lease = await self.calls.post(
                "lease",
                json_body={"wait": wait, "prefetch": prefetch},
                timeout=wait + CALL_TIMEOUT,
                name="lease prefetch" if prefetch else "lease idle",
            )
        except Refused as exc:
            if exc.code == "register_required":
                self.need_register = True
            else:
                await asyncio.sleep(self.backoff.next())
            return
        except Unavailable:
            if prefetch:  # as WorkerLoop._lease: a failed prefetch counts, with the time it took
                self.prefetch_answers.append(time.monotonic() - asked)
            await asyncio.sleep(self.backoff.next())
            return
        finally:
            self.lease_open = False
        self.backoff.reset()
        if prefetch and lease is not None:
            self.prefetch_answers.append(time.monotonic() - asked)
        if lease is None:  # as runworker: a scheduler that does not long-poll must not make the loop spin
            await asyncio.sleep(max(0.0, min(1.0, wait - (time.monotonic() - asked))))
            return
        self.launch(lease)

    def prefetch_due_at(self) -> float:
        """WorkerLoop._prefetch_due: with one task held, the next is asked for when the running one is
        expected to end within LOOP.prefetch_lead seconds (its pace is known from its second progress
        report, two steps in) or has run that long with no pace known; else at once."""
        lead = self.prefetch_lead()
        if len(self.held) != 1 or lead <= 0:
            return 0.0
        [job] = self.held.values()
        paced = job.gpu_start + 2 * self.job_seconds / STEPS
        if job.gpu_start + lead < paced:
            return job.gpu_start + lead
        return max(paced, job.gpu_end - lead)

    def prefetch_lead(self) -> float:
        """WorkerLoop.prefetch_lead, from this daemon's recent prefetch answers."""
        return prefetch_lead(self.prefetch_answers, most=LOOP.prefetch_lead)

    def launch(self, lease: dict) -> None:
        """The task goes to ComfyUI's queue at once: it runs when the prompts ahead of it are done."""
        start = max(time.monotonic(), self.gpu_free_at)
        self.gpu_free_at = start + self.job_seconds
        job = Job(lease, start, self.gpu_free_at)
        self.held[job.task_id] = job
        self.stats.leased.add(job.task_id)
        task = asyncio.create_task(self.run_task(job))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run_task(self, job: Job) -> None:
        """runner.run_task: start, throttled progress while ComfyUI samples, then the completion.

        As ComfyUIClient.wait does, each look takes the prompt's state as it is now (the latest step, and
        whether it has finished), reports it, and waits for the next event: a slow report does not queue a
        report per step behind it, nor hold the completion back by more than itself."""
        try:
            await sleep_until(job.gpu_start)
            await self.ensure_started(job)  # ComfyUI's execution_start
            step_seconds = self.job_seconds / STEPS
            seen = 0
            while not job.lost:
                now = time.monotonic()
                finished = now >= job.gpu_end
                step = min(STEPS, int((now - job.gpu_start) / step_seconds))
                if step > seen:
                    seen = step
                    await self.progress(job, step)
                if finished:
                    break
                await sleep_until(min(job.gpu_end, job.gpu_start + (seen + 1) * step_seconds))
            if not job.lost:
                await self.deliver(job)
        finally:
            if self.held.get(job.task_id) is job:
                del self.held[job.task_id]
            if job.lost and not job.completed:
                self.stats.lost += 1  # abandoned (a heartbeat's "lost" can race a landing completion)
            self.changed.set()

    async def ensure_started(self, job: Job) -> None:
        if job.start_reported:
            return
        body = {"lease_token": job.lease["lease_token"], "comfyui_prompt_id": job.prompt_id}
        try:
            await self.calls.report("start", f"tasks/{job.task_id}/start", body, task_id=job.task_id)
        except Refused:
            self.drop(job)
            return
        except Unavailable:
            return
        job.start_reported = True
        job.last_progress_at = time.monotonic()  # counts as a report

    async def progress(self, job: Job, step: int) -> None:
        now = time.monotonic()
        if now - job.last_progress_at < RUNNER.progress_interval:
            return
        job.last_progress_at = now
        await self.ensure_started(job)
        body = {"lease_token": job.lease["lease_token"], "value": step, "max": STEPS}
        try:
            await self.calls.report("progress", f"tasks/{job.task_id}/progress", body, task_id=job.task_id)
        except Refused:
            self.drop(job)
        except Unavailable:
            pass

    async def deliver(self, job: Job) -> None:
        """runner._upload: the images, retried on the next URL while the scheduler is unavailable."""
        import aiohttp

        await self.ensure_started(job)
        lease = job.lease
        image = png(int(lease["width"]), int(lease["height"]))
        delay = RUNNER.retry_delay
        for attempt in range(1, RUNNER.upload_attempts + 1):
            if job.lost:
                return
            form = aiohttp.FormData()
            form.add_field("lease_token", lease["lease_token"])
            form.add_field("comfyui_prompt_id", job.prompt_id)
            flag = self.lease_next_flag(job)
            if flag is not None:
                form.add_field("lease_next", "true")
                form.add_field("prefetch", "true" if flag else "false")
            for i in range(int(lease.get("batch_size") or 1)):
                name = f"{lease.get('filename_prefix', 'out')}_{i:05}_.png"
                form.add_field("images", image, filename=name, content_type="image/png")
            try:
                answer = await self.calls.post(
                    f"tasks/{job.task_id}/complete", data=form, timeout=COMPLETE_TIMEOUT
                )
            except Refused as exc:
                if exc.status in (404, 409):
                    self.drop(job)  # lease lost: abandoned, nothing reported
                    return
                await self.fail(job, "upload_failed", retryable=False)
                return
            except Unavailable:
                if attempt < RUNNER.upload_attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RUNNER.retry_max_delay)
                continue
            job.completed = True
            self.stats.completed.append((time.monotonic(), job.task_id))
            carried = (answer or {}).get("next")
            del self.held[job.task_id]
            if isinstance(carried, dict):
                self.stats.carried += 1
                self.launch(carried)  # the completion brought the next task: it takes this one's slot
            return
        await self.fail(job, "upload_failed", retryable=True)

    def lease_next_flag(self, job: Job) -> bool | None:
        """WorkerLoop._lease_next_flag: None (lease nothing) while re-registering, else whether another task
        is held (every held task is in ComfyUI's queue at once here)."""
        if self.need_register:
            return None
        others = [other for other in self.held.values() if other is not job]
        if len(others) == 1 and 0 < self.prefetch_lead() < self.job_seconds:
            return None  # WorkerLoop._short: after a long task the next is asked for just in time
        return bool(others)

    async def fail(self, job: Job, code: str, *, retryable: bool) -> None:
        body = {
            "lease_token": job.lease["lease_token"],
            "code": code,
            "message": "bench",
            "retryable": retryable,
        }
        delay = RUNNER.retry_delay
        for attempt in range(1, RUNNER.report_attempts + 1):
            try:
                await self.calls.post(f"tasks/{job.task_id}/fail", json_body=body)
                return
            except Refused:
                return
            except Unavailable:
                if attempt < RUNNER.report_attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RUNNER.retry_max_delay)

    def drop(self, job: Job) -> None:
        """The lease is no longer ours (409 lease_lost, register_required, a heartbeat's `lost`): the task is
        abandoned."""
        job.lost = True

    async def heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if self.protocol >= 2 and self.lease_open and not self.held:
                continue  # protocol 2: the open lease wait is this worker's heartbeat
            jobs = list(self.held.values())
            body = {"tasks": [{"task_id": j.task_id, "lease_token": j.lease["lease_token"]} for j in jobs]}
            try:
                reply = await self.calls.report("heartbeat", "heartbeat", body)
            except Refused as exc:
                if exc.code == "register_required":
                    self.need_register = True
                    self.changed.set()
                continue
            except Unavailable:
                continue
            lost = set((reply or {}).get("lost") or [])
            for job in jobs:
                if job.task_id in lost:
                    self.drop(job)


async def sleep_until(when: float) -> None:
    await asyncio.sleep(max(0.0, when - time.monotonic()))


# --- the busy farm ---------------------------------------------------------------------------------------


def postgres_cpu_of(database: str) -> dict[int, float]:
    """CPU seconds so far of the PostgreSQL processes that work for `database`: its backends (their process
    title names it) and the server's shared background processes, not other databases' backends (other
    people's tests on the same PostgreSQL)."""
    import psutil

    cpu = {}
    for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        if p.info["name"] != "postgres" or not p.info["cpu_times"]:
            continue
        title = " ".join(p.info["cmdline"] or []) + " "
        if f" {database} " not in title and ("127.0.0.1(" in title or "[local]" in title):
            continue
        cpu[p.pid] = p.info["cpu_times"].user + p.info["cpu_times"].system
    return cpu


def machine_busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


@dataclass
class Window:
    """What the measured window cost, from two snapshots."""

    wall: float = 0.0
    scheduler: float = 0.0
    postgres: float = 0.0  # every PostgreSQL process on the machine
    postgres_ours: float = 0.0  # this database's backends and the shared background processes
    generator: float = 0.0
    machine: float = 0.0


class Snapshot:
    def __init__(self, server: Server, database: str) -> None:
        self.server, self.database = server, database
        self.t = time.monotonic()
        self.cpu = server.cpu_seconds()
        self.pg = postgres_cpu()
        self.pg_ours = postgres_cpu_of(database)
        self.own = time.process_time()
        self.busy = machine_busy()

    def until_now(self) -> Window:
        ours = sum(cpu - self.pg_ours.get(pid, 0.0) for pid, cpu in postgres_cpu_of(self.database).items())
        return Window(
            wall=time.monotonic() - self.t,
            scheduler=self.server.cpu_seconds() - self.cpu,
            postgres=since(self.pg),
            postgres_ours=ours,
            generator=time.process_time() - self.own,
            machine=machine_busy() - self.busy,
        )


class BusyFarm:
    def __init__(self, args, server: Server, tokens: list[str], api_token: str, database: str) -> None:
        self.args = args
        self.server = server
        self.tokens = tokens
        self.api_token = api_token
        self.database = database
        self.stats = Stats()
        self.daemons: list[Daemon] = []
        self.submitted = 0
        self.depth_min = math.inf  # the fewest tasks queued the feeder saw in the measured window
        self.status: list[float] = []
        self.ideal = args.workers / args.job_seconds

    async def run(self) -> tuple[Window, list[tuple[float, str]], float]:
        import aiohttp

        # Keep-alive shorter than the server's (10 s): a daemon's connection is never idle that long (it
        # beats every 5 s), so none is reused just as the server closes it.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=5)
        async with aiohttp.ClientSession(connector=connector) as session:
            t0 = time.monotonic()
            depth = self.queue_depth()
            await self.submit(session, self.args.workers * LOOP.prefetch + depth)
            print(f"queue filled with {self.submitted} tasks in {time.monotonic() - t0:.1f} s", flush=True)
            for i, token in enumerate(self.tokens):
                calls = SchedulerCalls(
                    session, [self.server.url], token, self.args.daemon_protocol, self.stats
                )
                daemon = Daemon(
                    calls, f"busy-{i}", self.args.job_seconds, self.args.daemon_protocol, self.stats
                )
                self.daemons.append(daemon)
            # Start-ups spread over one job: jobs of one length that all began together would end together.
            spread = self.args.job_seconds / len(self.daemons)
            tasks = [asyncio.create_task(d.run(i * spread)) for i, d in enumerate(self.daemons)]
            tasks.append(asyncio.create_task(self.feed(session, depth)))
            try:
                await asyncio.sleep(self.args.warmup)
                self.stats.reset()
                self.status.clear()
                self.depth_min = math.inf
                snapshot = await asyncio.to_thread(Snapshot, self.server, self.database)
                start = snapshot.t
                tasks.append(asyncio.create_task(self.probe(session)))
                await asyncio.sleep(self.args.duration)
                window = await asyncio.to_thread(snapshot.until_now)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.gather(*(d.calls.close() for d in self.daemons), return_exceptions=True)
        return window, [c for c in self.stats.completed if c[0] >= start], start

    def queue_depth(self) -> int:
        """Tasks the feeder keeps queued beyond what the workers hold (filled before they start): the whole
        run's worth at the ideal rate, so that the queue never runs dry even when a saturated scheduler
        answers the feeder slowly. The depth costs a lease nothing: the prefetch rule looks at no more queued
        tasks than there are idle workers."""
        return max(20, math.ceil(self.ideal * (self.args.warmup + self.args.duration)))

    async def feed(self, session, depth: int) -> None:
        """Keep `depth` tasks queued beyond those the workers took, so that the queue never runs dry:
        FEED_CONCURRENCY submitters, each sending one more task whenever fewer are queued."""

        async def submitter() -> None:
            while True:
                queued = self.submitted - len(self.stats.leased)
                self.depth_min = min(self.depth_min, queued)
                if queued < depth:
                    await self.submit(session, 1)
                else:
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(submitter() for _ in range(FEED_CONCURRENCY)))

    async def submit(self, session, count: int) -> None:
        """`count` tasks through the REST API, FEED_CONCURRENCY at a time."""
        import aiohttp

        headers = {"Authorization": f"Token {self.api_token}"}
        body = task_body("busy")
        todo = iter(range(count))

        async def submitter() -> None:
            for _ in todo:
                t0 = time.monotonic()
                try:
                    async with session.post(
                        f"{self.server.url}/api/v1/tasks/", json=body, headers=headers
                    ) as r:
                        await r.read()
                        if r.status == 201:
                            self.submitted += 1
                            self.stats.answered("submit", time.monotonic() - t0)
                        else:
                            self.stats.error(f"submit HTTP {r.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.stats.error(f"submit {type(exc).__name__}")

        await asyncio.gather(*(submitter() for _ in range(min(count, FEED_CONCURRENCY))))

    async def probe(self, session) -> None:
        """A user watching a running task: its status every second."""
        import aiohttp

        headers = {"Authorization": f"Token {self.api_token}"}
        while True:
            t0 = time.monotonic()
            running = [task_id for d in self.daemons for task_id, j in d.held.items() if j.start_reported]
            if running:
                task_id = random.choice(running)
                try:
                    async with session.get(
                        f"{self.server.url}/api/v1/tasks/{task_id}/", headers=headers
                    ) as r:
                        await r.read()
                        if r.status == 200:
                            self.status.append(time.monotonic() - t0)
                        else:
                            self.stats.error(f"status HTTP {r.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.stats.error(f"status {type(exc).__name__}")
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


def measure(args) -> list:
    database = args.db_name
    db_url = database_url("postgres", database)
    setup_django(db_url)

    from bench.report import Figure

    api_token = staff_api_token("bench-feeder")
    tokens = make_workers(args.workers, "busy")
    ideal = args.workers / args.job_seconds
    server_kind = f"gthread x {args.threads} (WSGI)" if args.threads else "uvicorn (ASGI)"
    print(
        f"busy: {args.workers} simulated runworker daemons (protocol {args.daemon_protocol}, prefetch "
        f"{LOOP.prefetch}, progress at most every {RUNNER.progress_interval:g} s, heartbeat every "
        f"{HEARTBEAT_EVERY:g} s) x {args.job_seconds:g} s jobs = {ideal:.4g} tasks/s wanted; gunicorn "
        f"{args.processes} processes, {server_kind}; warm-up {args.warmup:g} s, measured {args.duration:g} s",
        flush=True,
    )
    with SchedulerServer(
        db_url, processes=args.processes, threads=args.threads, log=args.server_log
    ) as server:
        farm = BusyFarm(args, server, tokens, api_token, database)
        window, completed, _start = asyncio.run(farm.run())
    stats = farm.stats
    done = len(completed)
    rate = done / window.wall
    share = rate / ideal * 100
    errors = stats.error_total()
    sp50, sp99 = pct(farm.status, 50) * 1000, pct(farm.status, 99) * 1000
    per = max(1, done)
    sched_ms, pg_ms = window.scheduler / per * 1000, window.postgres_ours / per * 1000
    pg_all_ms, gen_ms = window.postgres / per * 1000, window.generator / per * 1000
    others = max(0.0, window.machine - window.scheduler - window.postgres - window.generator)

    def mark(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    print(f"completed {done} tasks in {window.wall:.1f} s: {rate:.2f} tasks/s of {ideal:.4g} wanted "
          f"({share:.1f} %; target >= 95 %: {mark(share >= 95)})")  # fmt: skip
    print(f"errors: {errors} (target 0: {mark(errors == 0)})" + (f"  {stats.detail()}" if errors else ""))
    print(f"status read p50 / p99: {sp50:.1f} / {sp99:.1f} ms over {len(farm.status)} reads "
          f"(target p99 <= 100 ms: {mark(sp99 <= 100)})")  # fmt: skip
    server_ms = sched_ms + pg_ms
    print(f"CPU per completed task: scheduler {sched_ms:.1f} ms + PostgreSQL {pg_ms:.1f} ms = "
          f"{server_ms:.1f} ms (target <= 20 ms: {mark(server_ms <= 20)}); generator {gen_ms:.1f} ms; "
          f"every PostgreSQL process on the machine {pg_all_ms:.1f} ms")  # fmt: skip
    calls = ", ".join(f"{k} {v / per:.2f}" for k, v in sorted(stats.requests.items()))
    print(f"requests per completed task: {calls}")
    latencies = ", ".join(
        f"{k} {pct(v, 50) * 1000:.0f}/{pct(v, 99) * 1000:.0f}" for k, v in sorted(stats.latency.items())
    )
    print(f"answer p50/p99 ms: {latencies}")
    print(f"completions that carried the next lease: {stats.carried / per * 100:.0f} %; fewest tasks queued "
          f"(the feeder's view): {farm.depth_min}")  # fmt: skip
    print(f"machine: cores busy {window.machine / window.wall:.2f} of 2 (scheduler "
          f"{window.scheduler / window.wall:.2f}, PostgreSQL {window.postgres / window.wall:.2f}, generator "
          f"{window.generator / window.wall:.2f}, other processes {others / window.wall:.2f}); leases lost "
          f"{stats.lost}")  # fmt: skip
    label = f"{args.workers} workers x {args.job_seconds:g} s jobs, protocol {args.daemon_protocol}"
    return [
        Figure("busy", f"{label}: tasks/s in % of {ideal:.4g} wanted", share, "%", "postgres", ">=", 95),
        Figure("busy", f"{label}: errors", errors, "", "postgres", "<=", 0),
        Figure("busy", f"{label}: status read p50", sp50, "ms", "postgres"),
        Figure("busy", f"{label}: status read p99", sp99, "ms", "postgres", "<=", 100),
        Figure("busy", f"{label}: scheduler + PostgreSQL CPU per task", server_ms, "ms", "postgres",
               "<=", 20),
        Figure("busy", f"{label}: scheduler CPU per task", sched_ms, "ms", "postgres"),
        Figure("busy", f"{label}: PostgreSQL CPU per task", pg_ms, "ms", "postgres"),
        Figure("busy", f"{label}: generator CPU per task", gen_ms, "ms", "-"),
    ]  # fmt: skip


class SchedulerServer(Server):
    """bench.common.Server that leaves no process behind: `stop()` also kills any gunicorn worker still alive
    once the master is gone, and `kill()` SIGKILLs the master and its workers at once (a crashed machine)."""

    def kill(self) -> None:
        import psutil

        workers = self.worker_pids()
        for pid in [self.proc.pid, *workers]:  # the master first: it must not start new workers
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                psutil.Process(pid).send_signal(signal.SIGKILL)
        self.proc.wait()
        self._leftovers = workers

    def stop(self) -> None:
        import psutil

        workers = [*getattr(self, "_leftovers", []), *self.worker_pids()]
        super().stop()
        for pid in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                proc.kill()
                proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=200, help="simulated daemons")
    parser.add_argument("--job-seconds", type=float, default=10.0, help="seconds each job keeps a GPU busy")
    parser.add_argument("--duration", type=float, default=120.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring (not measured)")
    parser.add_argument(
        "--daemon-protocol",
        type=int,
        default=PROTOCOL_VERSION,
        choices=(1, 2, 3),
        help="the daemons' protocol (3: start, progress and heartbeats on the worker socket)",
    )
    parser.add_argument("--db-name", default="t2i_bench_busy", help="the PostgreSQL database (made afresh)")
    add_suite_arguments(parser)
    args = parser.parse_args()
    save_figures(args.json, measure(args))


if __name__ == "__main__":
    main()
