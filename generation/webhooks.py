"""Callbacks: a signed JSON POST to a task's `callback_url` when it completes or fails, retried with backoff.

The delivery row is written after the task's transaction commits (generation.hooks.task_finished). Its first
try runs at once as a django-q2 task; failed tries wait WEBHOOK_BACKOFF seconds, doubling each time, and are
sent by the webhooks job (generation.jobs) once due, until WEBHOOK_MAX_TRIES. Each try claims the row with a
conditional UPDATE and checks the row count, so the immediate try and the job never send the same try twice.

A slow receiver delays only its own deliveries. Each try has short timeouts (connect CONNECT_TIMEOUT, read
WEBHOOK_TIMEOUT). At most WEBHOOK_PER_RECEIVER tries to one receiver (scheme, host, port) run at once,
across every job process (slots in the shared cache, generation.cache_slots): a try that finds them taken
goes back to waiting at once instead of holding a job process. A receiver that timed out or could not be
reached is marked slow for SLOW_SECONDS: its new deliveries skip the immediate try and wait for the webhooks
job, which sends each receiver's due deliveries in a thread of its own (WEBHOOK_SENDERS at once), one after
the other, and stops a receiver's round at its first failure; so the job processes, and everyone else's
deliveries, are held by a slow receiver for one timeout at most, not one per delivery.

The receiver checks `X-T2I-Signature: sha256=<hex>`, the HMAC-SHA256 of the raw request body under the
shared secret T2I_WEBHOOK_SECRET (see `signature`). Every try of one delivery sends the same bytes and the
same `X-T2I-Delivery` id, so receivers can drop duplicates.
"""

import contextlib
import hashlib
import hmac
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import urllib3
from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connections
from django.utils import timezone

from generation import callback_targets
from generation.cache_slots import CACHE_ERRORS, slot_claim, slot_free
from generation.models import Task, WebhookDelivery

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-T2I-Signature"
CONNECT_TIMEOUT = 3.0  # seconds; a receiver that cannot accept a connection in 3 s is down for our purposes
SLOW_SECONDS = 300  # how long a receiver that timed out or was unreachable skips the immediate try
EVENTS = {Task.Status.COMPLETED: "task.completed", Task.Status.FAILED: "task.failed"}


def _setting(name: str):
    return settings.T2I[name]


def webhooks_can_send() -> bool:
    """Whether callbacks go out at all: they are never sent unsigned, so not without T2I_WEBHOOK_SECRET."""
    return bool(_setting("WEBHOOK_SECRET"))


def signature(body: bytes, secret: str) -> str:
    """The X-T2I-Signature header value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_is_valid(body: bytes, secret: str, header: str) -> bool:
    """What a receiver does: recompute the HMAC over the raw body and compare in constant time."""
    return hmac.compare_digest(signature(body, secret), header or "")


def encode(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def task_payload(task: Task) -> dict:
    """The body: the event and the task exactly as GET /api/v1/tasks/<id>/ shows it, image URLs absolute
    when T2I_PUBLIC_URL is set."""
    from generation.serializers import TaskOutput

    task = (
        Task.objects.select_related("template", "worker", "owner").prefetch_related("images").get(pk=task.pk)
    )
    data = json.loads(json.dumps(TaskOutput(task).data, default=str))
    data.pop("queue_position", None)
    base = _setting("PUBLIC_URL")
    for image in data.get("images", []):
        for key in ("url", "thumbnail_url"):
            if base and image.get(key) and "://" not in image[key]:
                image[key] = f"{base}/{image[key].lstrip('/')}"
    return {"event": EVENTS.get(task.status, f"task.{task.status}"), "task": data}


def webhook_enqueue(*, task: Task) -> WebhookDelivery | None:
    """Record a delivery for a finished task that asked for one, and try it at once in the background."""
    if not task.callback_url or task.status not in EVENTS:
        return None
    if WebhookDelivery.objects.filter(
        task=task, event=EVENTS[task.status], created_at__gte=task.finished_at
    ).exists():
        return None  # this finish already has its delivery (the hook ran twice)
    delivery = WebhookDelivery.objects.create(
        task=task,
        url=task.callback_url,
        event=EVENTS[task.status],
        payload=task_payload(task),
        next_try_at=timezone.now(),
    )
    _try_soon(delivery.pk, delivery.url)
    return delivery


def webhook_retry_now(*, delivery: WebhookDelivery) -> bool:
    """An operator asks for one more try now, also after the retries ran out. False if already delivered."""
    if not WebhookDelivery.objects.filter(pk=delivery.pk, delivered_at=None).update(
        next_try_at=timezone.now()
    ):
        return False
    _try_soon(delivery.pk, delivery.url)
    return True


def receiver_of(url: str) -> str:
    """Whose deliveries these are, for the per-receiver limit: scheme, host and port of the URL."""
    split = callback_targets.parts(url)
    port = split.port or (443 if split.scheme == "https" else 80)
    return f"{split.scheme}://{(split.hostname or '').lower()}:{port}"


def receiver_is_slow(receiver: str) -> bool:
    try:
        return bool(cache.get(f"t2i:webhook-slow:{receiver}"))
    except CACHE_ERRORS:
        return False


def _try_soon(delivery_id: int, url: str) -> None:
    """Queue one try for the cluster, unless its receiver is slow: then the webhooks job sends it (in a thread
    of its own). If the broker is down the row is still due, so the job sends it too."""
    if receiver_is_slow(receiver_of(url)):
        return
    try:
        from django_q.tasks import async_task

        async_task("generation.webhooks.webhook_deliver", delivery_id, task_name=f"webhook-{delivery_id}")
    except Exception:
        logger.warning("webhook %s not queued; the webhooks job will send it", delivery_id, exc_info=True)


def webhook_backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed try: WEBHOOK_BACKOFF, doubling each time."""
    return timedelta(seconds=_setting("WEBHOOK_BACKOFF") * 2 ** (attempts - 1))


def webhook_deliver(delivery_id: int, *, now: datetime | None = None) -> bool:
    """One try of a due delivery. True when the receiver answered 2xx; False otherwise (or not due)."""
    now = now or timezone.now()
    claim_until = now + timedelta(seconds=_claim_seconds())
    claimed = WebhookDelivery.objects.filter(pk=delivery_id, delivered_at=None, next_try_at__lte=now).update(
        next_try_at=claim_until
    )
    if not claimed:
        return False
    delivery = WebhookDelivery.objects.select_related("task").get(pk=delivery_id)
    extra = {"task": delivery.task.public_id}
    attempts = delivery.attempts + 1
    if not webhooks_can_send():
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            attempts=attempts,
            last_tried_at=now,
            last_error="T2I_WEBHOOK_SECRET is not set; callbacks are not sent unsigned.",
            next_try_at=None,
        )
        logger.error("webhook %s not sent: T2I_WEBHOOK_SECRET is not set", delivery.pk, extra=extra)
        return False
    receiver = receiver_of(delivery.url)
    try:
        slot = slot_claim(
            f"webhook:{receiver}", limit=_setting("WEBHOOK_PER_RECEIVER"), seconds=_claim_seconds()
        )
    except CACHE_ERRORS:
        slot = ""  # the limit keeps receivers from delaying each other; without the cache, send anyway
    if slot is None:  # as many tries to this receiver as allowed are running: wait, due again at once
        WebhookDelivery.objects.filter(pk=delivery.pk, next_try_at=claim_until).update(next_try_at=now)
        logger.info("webhook %s waits: its receiver is busy with other deliveries", delivery.pk, extra=extra)
        return False
    try:
        return _send(delivery, attempts=attempts, now=now, receiver=receiver)
    finally:
        if slot:
            with contextlib.suppress(*CACHE_ERRORS):  # else it expires
                slot_free(slot)


def _claim_seconds() -> int:
    """How long a claimed try may take at most: both timeouts and a margin."""
    return int(CONNECT_TIMEOUT + 2 * _setting("WEBHOOK_TIMEOUT") + 60)


def _send(delivery: WebhookDelivery, *, attempts: int, now: datetime, receiver: str) -> bool:
    extra = {"task": delivery.task.public_id}
    body = encode(delivery.payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "t2i-scheduler-webhook/1",
        SIGNATURE_HEADER: signature(body, _setting("WEBHOOK_SECRET")),
        "X-T2I-Event": delivery.event,
        "X-T2I-Delivery": str(delivery.pk),
    }
    status, error = None, ""
    try:
        status = _post(delivery.url, callback_targets.resolve(delivery.url), body, headers)
        if not 200 <= status < 300:
            error = (
                f"HTTP {status}"  # never the reply's body: it could carry what the receiver should not leak
            )
    except callback_targets.Refused as exc:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            attempts=attempts, last_tried_at=now, last_error=f"Not sent: {exc}", next_try_at=None
        )
        logger.warning("webhook %s not sent: %s", delivery.pk, exc, extra=extra)
        return False
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:1000]
        _mark_slow(receiver)
    finished = timezone.now()
    if not error:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            attempts=attempts,
            last_status_code=status,
            last_error="",
            last_tried_at=finished,
            delivered_at=finished,
            next_try_at=None,
        )
        logger.info("webhook %s delivered (HTTP %s)", delivery.pk, status, extra=extra)
        return True
    retry_at = finished + webhook_backoff(attempts) if attempts < _setting("WEBHOOK_MAX_TRIES") else None
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        attempts=attempts,
        last_status_code=status,
        last_error=error,
        last_tried_at=finished,
        next_try_at=retry_at,
    )
    logger.warning(
        "webhook %s try %d failed (%s); %s",
        delivery.pk,
        attempts,
        error,
        f"next try at {retry_at:%H:%M:%S}" if retry_at else "giving up",
        extra=extra,
    )
    return False


def _post(url: str, address: str, body: bytes, headers: dict) -> int:
    """POST `body` to `url` at `address` (the one callback_targets.resolve checked), without following
    redirects and without reading the reply; its status."""
    split = callback_targets.parts(url)
    path = (split.path or "/") + (f"?{split.query}" if split.query else "")
    read = _setting("WEBHOOK_TIMEOUT")
    timeout = urllib3.Timeout(connect=min(CONNECT_TIMEOUT, read), read=read)
    options = {"port": split.port, "timeout": timeout, "retries": False, "maxsize": 1}
    if split.scheme == "https":
        # TLS to the address, verified against the URL's host name (SNI and the certificate).
        pool = urllib3.HTTPSConnectionPool(
            address, server_hostname=split.hostname, assert_hostname=split.hostname, **options
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, **options)
    with pool:
        response = pool.urlopen(
            "POST", path, body=body, headers={**headers, "Host": split.netloc}, redirect=False,
            preload_content=False,
        )  # fmt: skip
        response.close()
        return response.status


def _mark_slow(receiver: str) -> None:
    with contextlib.suppress(*CACHE_ERRORS):
        cache.set(f"t2i:webhook-slow:{receiver}", 1, SLOW_SECONDS)


def webhooks_deliver_due(*, now: datetime | None = None, limit: int = 100) -> int:
    """Try the deliveries that are due (oldest first, at most `limit`), each receiver's in a thread of its
    own (WEBHOOK_SENDERS at once) and in order, a receiver's round ending at its first failed try; return
    how many were delivered."""
    now = now or timezone.now()
    due = WebhookDelivery.objects.filter(delivered_at=None, next_try_at__lte=now).order_by("next_try_at")
    rounds: dict[str, list[int]] = {}
    for pk, url in due.values_list("pk", "url")[:limit]:
        rounds.setdefault(receiver_of(url), []).append(pk)
    senders = min(_setting("WEBHOOK_SENDERS"), len(rounds))
    if senders <= 1:
        return sum(_deliver_round(ids, now=now) for ids in rounds.values())
    with ThreadPoolExecutor(max_workers=senders, thread_name_prefix="webhook") as pool:
        return sum(pool.map(lambda ids: _in_thread(_deliver_round, ids, now=now), rounds.values()))


def _deliver_round(ids: list[int], *, now: datetime) -> int:
    """One receiver's due deliveries in order, until one fails (the rest wait for the next round)."""
    sent = 0
    for pk in ids:
        if not webhook_deliver(pk, now=now):
            break
        sent += 1
    return sent


def _in_thread(function, *args, **kwargs):
    """Run `function` in a pool thread, which has database connections of its own: closed when done."""
    close_old_connections()
    try:
        return function(*args, **kwargs)
    finally:
        connections.close_all()
