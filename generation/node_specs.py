"""The workers' whole ComfyUI `/object_info` (workers_app.models.ObjectInfoSpec, one row per distinct body):
read once per server process and digest, merged over the online workers for the front door's
`/object_info`, and the specs a submit checks a workflow against (generation.spec_checks).

A worker names its spec by `capabilities["object_info_sha256"]`. A worker that names none (a daemon older
than this) or whose spec the scheduler does not hold yet is "partial": the front door then adds what it
reports (node classes, output flags, model file lists) and says so in `X-T2I-Partial`, and submit checks
that need specs are skipped while such a worker could run the workflow."""

from __future__ import annotations

import gzip
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from generation import api_workflows, comfy_shapes
from workers_app.models import ObjectInfoSpec, Worker

Spec = dict[str, Any]  # class name -> its /object_info entry, as ComfyUI answered it
SPECS_KEPT = 8  # parsed specs per process (a 5 MB body parses to some tens of MB)
MERGED_KEPT = 4  # merged /object_info answers per process, by the set of specs and partial workers


class _Lru:
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_specs = _Lru(SPECS_KEPT)
_merged = _Lru(MERGED_KEPT)


def clear_caches() -> None:
    """For tests: forget what this process has read."""
    _specs.clear()
    _merged.clear()


def digest_of(worker: Worker) -> str:
    return (worker.capabilities or {}).get("object_info_sha256") or ""


def specs_for(digests: Iterable[str]) -> dict[str, Spec]:
    """The stored specs among `digests`, parsed (a body never changes under its digest, so each process
    reads it once); digests the scheduler does not hold are left out."""
    wanted = {d for d in digests if d}
    found = {d: spec for d in wanted if (spec := _specs.get(d)) is not None}
    missing = wanted - set(found)
    if missing:
        for digest, body in ObjectInfoSpec.objects.filter(sha256__in=missing).values_list("sha256", "body"):
            spec = json.loads(gzip.decompress(bytes(body)))
            _specs.put(digest, spec)
            found[digest] = spec
    return found


# -- the front door's /object_info --------------------------------------------------------------------------
@dataclass(frozen=True)
class FarmObjectInfo:
    info: dict[str, Any]
    body: bytes  # `info` as JSON, rendered once
    partial: bool  # some worker counted has no stored spec: its classes are listed as far as it reports them


def farm_object_info(workers: Sequence[Worker]) -> FarmObjectInfo:
    """/object_info of the farm: the online workers' (the registered ones while none is online) specs
    merged, plus what partial workers report; cached by the set of specs and partial workers."""
    online = [w for w in workers if w.is_online] or list(workers)
    specs = specs_for(digest_of(w) for w in online)
    partial = [w for w in online if digest_of(w) not in specs]
    key = (tuple(sorted(specs)), tuple(sorted((w.pk, str(w.inventory_at)) for w in partial)))
    cached = _merged.get(key)
    if cached is None:
        info = merge([specs[d] for d in sorted(specs)])
        if partial:
            info = dict(info)  # merge() may answer a cached spec itself
            _add_reported(info, api_workflows.inventory(w.capabilities for w in partial))
        cached = FarmObjectInfo(info, json.dumps(info, ensure_ascii=False).encode(), bool(partial))
        _merged.put(key, cached)
    return cached


def merge(specs: Sequence[Spec]) -> Spec:
    """One /object_info of several: every class of any; a class several have is the first one's entry, its
    combo inputs listing the choices of all (model files merged: sorted when each list was)."""
    if len(specs) == 1:
        return specs[0]
    merged: Spec = {}
    for spec in specs:
        for name, node in spec.items():
            have = merged.get(name)
            if have is None:
                merged[name] = node
            elif have is not node and have != node:
                merged[name] = _merge_node(have, node)
    return merged


def _merge_node(have: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    node = dict(have)
    declared = dict(node.get("input") or {})
    theirs = other.get("input") or {}
    for category in ("required", "optional"):
        mine = declared.get(category)
        if not isinstance(mine, dict) or not isinstance(theirs.get(category), dict):
            continue
        inputs = dict(mine)
        for name, spec in mine.items():
            union = _union_combo(spec, theirs[category].get(name))
            if union is not None:
                inputs[name] = union
        declared[category] = inputs
    node["input"] = declared
    return node


def combo_options(spec: Any) -> list[Any] | None:
    """The choices of a combo input, old (`[[…], {…}]`) or new (`["COMBO", {"options": […]}]`) style, or
    None when `spec` is not a combo."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        options = extra.get("options", [])
        return options if isinstance(options, list) else []
    return None


def _with_options(spec: list[Any], options: list[Any]) -> list[Any]:
    if isinstance(spec[0], list):
        return [options, *spec[1:]]
    return [spec[0], {**(spec[1] if len(spec) > 1 else {}), "options": options}]


def _union_combo(spec: Any, other: Any) -> list[Any] | None:
    mine, theirs = combo_options(spec), combo_options(other)
    if mine is None or theirs is None or mine == theirs:
        return None
    seen = set(map(_key, mine))
    union = [*mine, *(v for v in theirs if _key(v) not in seen)]
    if _is_sorted(mine) and _is_sorted(theirs):
        union.sort(key=_key)
    return _with_options(spec, union)


def _key(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _is_sorted(values: list[Any]) -> bool:
    keys = [_key(v) for v in values]
    return keys == sorted(keys)


def _add_reported(info: Spec, reported: api_workflows.Inventory) -> None:
    """What partial workers report, into `info` (a fresh dict whose entries may be a cached spec's: those it
    changes are copied first): their classes it lacks, as far as they report them, and their model files
    in the choices of those inputs."""
    listed = comfy_shapes.object_info(reported)
    for name, entry in listed.items():
        if name not in info:
            info[name] = entry
            continue
        for (class_type, input_name), files in reported.model_inputs.items():
            if class_type != name:
                continue
            node = info[name]
            for category in ("required", "optional"):
                spec = ((node.get("input") or {}).get(category) or {}).get(input_name)
                union = _union_combo(spec, [sorted(files), {}]) if spec is not None else None
                if union is not None:
                    node = {**node, "input": {**node["input"], category: {**node["input"][category]}}}
                    node["input"][category][input_name] = union
                    info[name] = node


def capable_specs(workers: Iterable[Worker]) -> Mapping[str, tuple[Spec, int]] | None:
    """The distinct specs of `workers` with how many of them have each, or None when any of them has no
    stored spec (then the farm cannot tell what all of them would accept)."""
    workers = list(workers)
    specs = specs_for(digest_of(w) for w in workers)
    counts: dict[str, int] = {}
    for worker in workers:
        digest = digest_of(worker)
        if digest not in specs:
            return None
        counts[digest] = counts.get(digest, 0) + 1
    return {d: (specs[d], n) for d, n in counts.items()}
