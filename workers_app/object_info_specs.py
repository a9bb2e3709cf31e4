"""A worker's whole ComfyUI `/object_info`, stored once per distinct body (ObjectInfoSpec): whether the
scheduler wants it, storing it checked and bounded, and forgetting the specs no worker names. The front door
serves and checks against them (generation.node_specs, generation.spec_checks)."""

import gzip
import hashlib
import json
import logging
import re
import zlib
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from generation.exceptions import InvalidInput, TooLarge
from generation.services import worker_assert_live
from workers_app.models import ObjectInfoSpec, Worker

logger = logging.getLogger(__name__)

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
OBJECT_INFO_CLASSES_MAX = 20000
OBJECT_INFO_UNNAMED_KEEP = timedelta(hours=1)  # a spec no worker names is deleted this long after


def object_info_wanted(*, worker: Worker) -> str | None:
    """What the daemon should do with the /object_info its capabilities name: "have" (the scheduler stores
    it; marked as named now), "send" (`POST object_info/<sha256>`), or None when it names none (a daemon
    older than this)."""
    digest = (worker.capabilities or {}).get("object_info_sha256")
    if not digest:
        return None
    found = ObjectInfoSpec.objects.filter(sha256=digest).update(named_at=timezone.now())
    return "have" if found else "send"


def worker_store_object_info(*, worker: Worker, sha256: str, data: bytes, gzipped: bool) -> bool:
    """Store the body of a worker's `/object_info` under its SHA-256 (of the unpacked JSON bytes), checked
    and bounded (T2I_OBJECT_INFO_MAX_BYTES). True when it was new. Other workers that name the same digest
    share it."""
    worker_assert_live(worker=worker)
    if not SHA256_HEX.fullmatch(sha256):
        raise InvalidInput("Not a SHA-256.", fields={"sha256": ["64 lowercase hex digits."]})
    if not data:
        raise InvalidInput("The body is empty.", fields={"body": ["Send the /object_info JSON."]})
    most = settings.T2I["OBJECT_INFO_MAX_BYTES"]
    if len(data) > most:
        raise TooLarge(
            f"/object_info may be at most {most} bytes.", fields={"body": [f"At most {most} bytes."]}
        )
    raw = _gunzip(data, most) if gzipped else data
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise InvalidInput(
            "The body's SHA-256 is not the one named.", fields={"sha256": ["Does not match the body."]}
        )
    classes = _check_object_info(raw)
    now = timezone.now()
    if ObjectInfoSpec.objects.filter(sha256=sha256).update(named_at=now):
        return False
    packed = data if gzipped else gzip.compress(raw, compresslevel=6, mtime=0)
    _, created = ObjectInfoSpec.objects.get_or_create(
        sha256=sha256, defaults={"body": packed, "size": len(raw), "classes": classes, "named_at": now}
    )
    if created:
        logger.info(
            "object_info %s stored (%d classes, %d bytes)",
            sha256[:12],
            classes,
            len(raw),
            extra={"worker": worker.name},
        )
    return created


def _gunzip(data: bytes, most: int) -> bytes:
    inflate = zlib.decompressobj(wbits=31)
    try:
        raw = inflate.decompress(data, most + 1)
    except zlib.error:
        raise InvalidInput("The body is not valid gzip.", fields={"body": ["Not valid gzip."]})
    if len(raw) > most or inflate.unconsumed_tail:
        raise TooLarge(
            f"/object_info may be at most {most} bytes unpacked.", fields={"body": [f"At most {most} bytes."]}
        )
    if not inflate.eof:
        raise InvalidInput("The gzip body is cut short.", fields={"body": ["Not valid gzip."]})
    return raw


def _check_object_info(raw: bytes) -> int:
    """The number of node classes of an /object_info body, or InvalidInput naming `body`: a JSON object of
    class name to an object whose `input`, if any, is an object of objects."""

    def bad(message: str) -> InvalidInput:
        return InvalidInput(message, fields={"body": [message]})

    try:
        info = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad("Not valid UTF-8 JSON.")
    if not isinstance(info, dict):
        raise bad("Must be a JSON object of node class to its description.")
    if len(info) > OBJECT_INFO_CLASSES_MAX:
        raise bad(f"At most {OBJECT_INFO_CLASSES_MAX} node classes.")
    for name, node in info.items():
        if len(name) > 255 or not isinstance(node, dict):
            raise bad("Each node class (at most 255 characters) must name an object.")
        declared = node.get("input", {})
        if not isinstance(declared, dict) or not all(isinstance(v, dict) for v in declared.values()):
            raise bad(f"{name[:80]}: `input` must be an object of objects.")
    return len(info)


def object_info_specs_prune(*, now: datetime | None = None) -> int:
    """Delete the specs no worker names and none has named for OBJECT_INFO_UNNAMED_KEEP."""
    now = now or timezone.now()
    named = {
        d
        for d in Worker.objects.exclude(registered_at=None).values_list(
            "capabilities__object_info_sha256", flat=True
        )
        if d
    }
    stale = ObjectInfoSpec.objects.filter(named_at__lt=now - OBJECT_INFO_UNNAMED_KEEP).exclude(
        sha256__in=named
    )
    return stale.delete()[0]
