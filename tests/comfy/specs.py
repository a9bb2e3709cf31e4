"""Worker specs (whole /object_info answers) for the front-door tests: the captured subset, stored as a
worker's daemon would store it (workers_app.models.ObjectInfoSpec)."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from django.utils import timezone

from tests.conftest import CHECKPOINT
from workers_app.models import ObjectInfoSpec, Worker

TRACES = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui_traces"


def subset(checkpoints=(CHECKPOINT,)) -> dict[str, Any]:
    """The captured /object_info subset, with these checkpoint files."""
    info = json.loads((TRACES / "object_info_subset.json").read_text())
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = list(checkpoints)
    return info


def body_of(info: dict[str, Any]) -> bytes:
    return json.dumps(info, separators=(",", ":"), ensure_ascii=False).encode()


def store(info: dict[str, Any]) -> str:
    body = body_of(info)
    digest = hashlib.sha256(body).hexdigest()
    ObjectInfoSpec.objects.get_or_create(
        sha256=digest,
        defaults={
            "body": gzip.compress(body),
            "size": len(body),
            "classes": len(info),
            "named_at": timezone.now(),
        },
    )
    return digest


def give(worker: Worker, info: dict[str, Any], *, stored: bool = True) -> str:
    """`worker` names `info` as its spec (and the scheduler holds it, unless `stored` is False)."""
    body = body_of(info)
    digest = store(info) if stored else hashlib.sha256(body).hexdigest()
    caps = copy.deepcopy(worker.capabilities)
    caps["object_info_sha256"] = digest
    caps["output_nodes"] = sorted(n for n, e in info.items() if e.get("output_node"))
    caps["node_classes"] = sorted(set(caps.get("node_classes") or ()) | set(info))
    Worker.objects.filter(pk=worker.pk).update(capabilities=caps, inventory_at=timezone.now())
    worker.refresh_from_db()
    return digest
