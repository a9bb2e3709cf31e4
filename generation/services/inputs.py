"""Input images: what ComfyUI's POST /upload/image stores (per owner, the anonymous space counting as one),
which uploads a workflow's LoadImage nodes need, how a worker gets them (fenced by its lease), and how they
go (deleted by their owner, or by the retention job when temp) without breaking a task that needs them."""

from __future__ import annotations

import copy
import logging
import os
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from generation import api_workflows, comfy_selectors, images
from generation.api_workflows import Inventory
from generation.exceptions import (
    InputsDeleted,
    InvalidInput,
    LeaseLost,
    NotFound,
    TooLarge,
    UploadInUse,
    WorkflowRejected,
)
from generation.models import InputImage, Task
from generation.services.deletion import files_delete
from generation.services.transitions import fenced
from generation.upload_parsers import PATH_MARK

logger = logging.getLogger(__name__)

NAME_MAX = 200
STORAGE_FOLDER = "inputs"
# Where a worker puts the inputs on its ComfyUI: named by content, so two users' `cat.png` never meet there.
WORKER_SUBFOLDER = "t2i_inputs"
LEASE_LOST = "This lease is no longer yours."
# A task in these states may still need its uploads: a worker fetches them under its lease.
NEEDS_INPUTS = Task.UNFINISHED_STATUSES


def _owner(owner: AbstractBaseUser | None) -> AbstractBaseUser | None:
    return owner if owner is not None and owner.is_authenticated else None


def _check_text(value: str, field: str) -> None:
    if len(value) > NAME_MAX:
        raise InvalidInput(f"{field} is too long.", fields={field: [f"At most {NAME_MAX} characters."]})
    if any(ord(c) < 32 or c in "\x7f\\:" for c in value):
        raise InvalidInput(f"{field} has characters that are not allowed.", fields={field: ["Not allowed."]})


def clean_upload_name(name: str, subfolder: str, kind: str) -> tuple[str, str, str]:
    """(kind, subfolder, name) of an upload, or InvalidInput: a name with a path in it (`../`), a subfolder
    that leaves the folder, a type other than input or temp."""
    if kind not in api_workflows.INPUT_KINDS:
        raise InvalidInput("type must be input or temp.", fields={"type": ["Must be input or temp."]})
    name = name.strip()
    if not name or name.startswith(PATH_MARK) or "/" in name or name in (".", ".."):
        raise InvalidInput(
            "The file name must be a plain name.", fields={"image": ["Not a plain file name."]}
        )
    _check_text(name, "image")
    subfolder = subfolder.strip().strip("/")
    parts = subfolder.split("/") if subfolder else []
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidInput(
            "The subfolder must stay inside the input folder.", fields={"subfolder": ["Bad path."]}
        )
    _check_text(subfolder, "subfolder")
    return kind, subfolder, name


def _free_name(taken: set[str], name: str, *, same: str | None) -> str:
    """ComfyUI's naming: `name` if free, else `stem (1).ext`, `stem (2).ext`, …"""
    stem, ext = os.path.splitext(name)
    candidate, i = name, 1
    while candidate in taken and candidate != same:
        candidate = f"{stem} ({i}){ext}"
        i += 1
    return candidate


def input_image_upload(
    *,
    owner: AbstractBaseUser | None,
    upload: Any,
    subfolder: str = "",
    kind: str = "input",
    overwrite: bool = False,
) -> InputImage:
    """Store an uploaded image under ComfyUI's rules: the same name again with the same bytes is that upload;
    with other bytes it becomes `name (1).ext` unless `overwrite`, which replaces it. The image is checked
    with Pillow and capped at T2I_MAX_IMAGE_BYTES (TooLarge); the file is stored before the row is written."""
    owner = _owner(owner)
    kind, subfolder, name = clean_upload_name(getattr(upload, "name", "") or "", subfolder, kind)
    max_bytes = settings.T2I["MAX_IMAGE_BYTES"]
    if getattr(upload, "size", 0) > max_bytes:
        raise TooLarge(f"The image is larger than {max_bytes} bytes.", fields={"image": ["Too large."]})
    checked = images.verify_image(upload, width=None, height=None, max_bytes=max_bytes, field="image")
    try:
        stored = default_storage.save(
            f"{STORAGE_FOLDER}/{uuid.uuid4().hex}.{checked.extension}", checked.file
        )
    finally:
        checked.close()
    try:
        with transaction.atomic():
            row, replaced = _place(owner, kind, subfolder, name, checked, stored, overwrite)
    except BaseException:
        default_storage.delete(stored)
        raise
    if replaced and replaced != row.file.name:
        transaction.on_commit(lambda: default_storage.delete(replaced))
    if row.file.name != stored:
        default_storage.delete(stored)  # an identical upload: the earlier file stays
    return row


def input_image_mask_upload(
    *,
    owner: AbstractBaseUser | None,
    upload: Any,
    original_ref: Any,
    subfolder: str = "",
    kind: str = "input",
    overwrite: bool = False,
) -> InputImage:
    """ComfyUI's /upload/mask: the image `original_ref` names with the alpha of the uploaded mask, stored as
    input_image_upload stores an upload of the mask's file name. `original_ref` ({filename, subfolder, type})
    names one of the owner's uploads (type input or temp) or an image of their front-door history (output,
    ComfyUI's default): nothing else, no path out of its folder (InvalidInput)."""
    name = getattr(upload, "name", "") or ""
    clean_upload_name(name, subfolder, kind)
    max_bytes = settings.T2I["MAX_IMAGE_BYTES"]
    if getattr(upload, "size", 0) > max_bytes:
        raise TooLarge(f"The image is larger than {max_bytes} bytes.", fields={"image": ["Too large."]})
    original = _original_file(owner, original_ref)
    mask = images.verify_image(upload, width=None, height=None, max_bytes=max_bytes, field="image")
    try:
        with original.open("rb") as source:
            data = images.with_mask_alpha(source, mask.file, name=name)
    finally:
        mask.close()
    combined = ContentFile(data, name=name)
    return input_image_upload(
        owner=owner, upload=combined, subfolder=subfolder, kind=kind, overwrite=overwrite
    )


def _original_file(owner: AbstractBaseUser | None, ref: Any) -> FieldFile:
    """The stored file of the image an /upload/mask `original_ref` names, if it is the owner's."""
    if not isinstance(ref, dict):
        raise _bad_ref("original_ref must be an object: {filename, subfolder, type}.")
    filename, subfolder, kind = ref.get("filename"), ref.get("subfolder") or "", ref.get("type") or "output"
    if not (isinstance(filename, str) and isinstance(subfolder, str) and isinstance(kind, str)):
        raise _bad_ref("filename, subfolder and type must be text.")
    filename, annotated = _annotated(filename)
    kind = annotated or kind
    subfolder = subfolder.rstrip("/")
    parts = [*subfolder.split("/"), *filename.split("/")] if subfolder else filename.split("/")
    if not filename or any(part in ("", ".", "..") for part in parts) or "\\" in subfolder + filename:
        raise _bad_ref("original_ref must name a file inside its folder.")
    subfolder, name = "/".join(parts[:-1]), parts[-1]
    if kind in api_workflows.INPUT_KINDS:
        rows = InputImage.objects.filter(owner=_owner(owner), kind=kind, subfolder=subfolder, name=name)
        row = rows.first()
        found = row.file if row is not None else None
    elif kind == "output":
        image = comfy_selectors.image_named(owner or AnonymousUser(), subfolder, name)
        found = image.file if image is not None else None
    else:
        raise _bad_ref("type must be input, temp or output.")
    if found is None:
        raise _bad_ref(f"No image of yours is named {ref.get('filename')!r} in {kind}.")
    return found


def _annotated(filename: str) -> tuple[str, str]:
    """ComfyUI's annotated names (folder_paths.annotated_filepath): `name [output]` is `name` in output."""
    for kind in (*api_workflows.INPUT_KINDS, "output"):
        if filename.endswith(f" [{kind}]"):
            return filename[: -len(kind) - 3], kind
    return filename, ""


def _bad_ref(detail: str) -> InvalidInput:
    return InvalidInput(detail, fields={"original_ref": [detail]})


def _place(owner, kind, subfolder, name, checked, stored, overwrite) -> tuple[InputImage, str]:
    """The row for this upload (new, replaced or the identical earlier one) and the file name it replaced."""
    stem = os.path.splitext(name)[0]
    folder = InputImage.objects.select_for_update().filter(owner=owner, kind=kind, subfolder=subfolder)
    rows = {row.name: row for row in folder.filter(name__startswith=stem)}  # the name and its variants
    existing = rows.get(name)
    fields = {
        "file": stored,
        "width": checked.width,
        "height": checked.height,
        "size_bytes": checked.size,
        "sha256": checked.sha256,
    }
    if existing is not None and overwrite:
        replaced = existing.file.name
        for key, value in fields.items():
            setattr(existing, key, value)
        existing.save(update_fields=[*fields])
        return existing, replaced
    same = next(
        (r.name for r in rows.values() if r.sha256 == checked.sha256 and _is_variant(r.name, name)), None
    )
    final = _free_name(set(rows), name, same=same)
    if final in rows:
        return rows[final], ""
    try:
        with transaction.atomic():
            row = InputImage.objects.create(owner=owner, kind=kind, subfolder=subfolder, name=final, **fields)
    except IntegrityError:
        raise InvalidInput(
            "Another upload of this name arrived at the same time; send it again.",
            fields={"image": ["Busy."]},
        )
    return row, ""


def _is_variant(candidate: str, name: str) -> bool:
    """`name` or one of its `stem (n).ext` variants (ComfyUI compares bytes along that chain)."""
    stem, ext = os.path.splitext(name)
    return candidate == name or (candidate.startswith(f"{stem} (") and candidate.endswith(f"){ext}"))


def inputs_needed(
    *, owner: AbstractBaseUser | None, workflow: dict[str, Any], farm: Inventory
) -> list[InputImage]:
    """The owner's uploads a workflow's LoadImage nodes name, or WorkflowRejected (ComfyUI's
    `custom_validation_failed` on the node) for a name the owner has not uploaded."""
    refs = set(api_workflows.input_image_refs(workflow).values())
    wanted = [ref for ref in refs if ref[0]]
    found = _uploads(_owner(owner), wanted)
    try:
        api_workflows.check_input_images(workflow, {row.ref for row in found}, farm)
    except api_workflows.WorkflowProblem as problem:
        raise WorkflowRejected(problem)
    return found


def _uploads(owner, refs: Iterable[tuple[str, str, str]]) -> list[InputImage]:
    refs = list(refs)[: api_workflows.MAX_NODES]
    if not refs:
        return []
    names = {name for _, _, name in refs}
    rows = InputImage.objects.filter(owner=owner, name__in=names)
    return [row for row in rows if row.ref in set(refs)]


def worker_inputs(task: Task) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """For a workflow that names uploads: the name each has on a worker's ComfyUI (by content), and what the
    worker fetches and uploads there, as {sha256, name, subfolder}."""
    if task.workflow is None or not api_workflows.input_image_refs(task.workflow):
        return {}, []
    names, inputs = {}, []
    for row in task.input_images.all():
        ext = os.path.splitext(row.file.name)[1]
        stored_name = f"{row.sha256}{ext}"
        names[row.ref] = f"{WORKER_SUBFOLDER}/{stored_name}"
        if not any(i["sha256"] == row.sha256 for i in inputs):
            inputs.append({"sha256": row.sha256, "name": stored_name, "subfolder": WORKER_SUBFOLDER})
    return names, inputs


def input_image_for_worker(
    *, worker_id: int, task_id: uuid.UUID, lease_token: uuid.UUID, sha256: str
) -> InputImage:
    """An input of a task this worker holds the live lease of (LeaseLost otherwise, NotFound if not its)."""
    if not fenced(task_id=task_id, lease_token=lease_token, worker_id=worker_id).exists():
        raise LeaseLost(LEASE_LOST)
    row = InputImage.objects.filter(tasks__public_id=task_id, sha256=sha256).first()
    if row is None:
        raise NotFound("This task has no such input.")
    return row


def workflow_with_uploads(
    *, owner: AbstractBaseUser | None, workflow: dict[str, Any], uploads: dict[str, Any]
) -> dict[str, Any]:
    """Store each file in `uploads` (by LoadImage node id) as an input image of `owner` and return a copy of
    the workflow whose node names it. InvalidInput names the field `input_<node id>` of a bad file."""
    refs = api_workflows.input_image_refs(workflow)
    built = copy.deepcopy(workflow)
    for node_id, upload in uploads.items():
        if node_id not in refs:
            continue
        try:
            row = input_image_upload(owner=owner, upload=upload, subfolder="web")
        except InvalidInput as exc:
            raise type(exc)(exc.detail, fields={f"input_{node_id}": [exc.detail]}) from exc
        built[node_id]["inputs"]["image"] = row.comfy_name
    return built


def inputs_hold(*, workflow: dict[str, Any], uploads: list[InputImage], farm: Inventory) -> list[InputImage]:
    """In the submit's transaction, before its task records `uploads` (from inputs_needed): lock their rows,
    so that a delete either came first (the workflow is then refused as if the name were unknown) or waits
    for the task to be queued, and then sees it and refuses (input_image_delete)."""
    if not uploads:
        return []
    rows = InputImage.objects.select_for_update().filter(pk__in=[row.pk for row in uploads])
    held = list(rows.order_by("pk"))  # one lock order for every submit
    if len(held) < len(uploads):
        try:
            api_workflows.check_input_images(workflow, {row.ref for row in held}, farm)
        except api_workflows.WorkflowProblem as problem:
            raise WorkflowRejected(problem)
    return held


def task_inputs_hold(task: Task) -> None:
    """In a retry's transaction: lock the uploads the task's workflow names, or InputsDeleted (409) if one of
    them was deleted after the task ended (its record on the task went with it)."""
    if task.workflow is None:
        return
    refs = api_workflows.input_image_refs(task.workflow)
    wanted = {ref for ref in refs.values() if ref[0]}
    if not wanted:
        return
    rows = InputImage.objects.select_for_update(of=("self",)).filter(tasks=task).order_by()
    held = {row.ref for row in rows}
    missing = sorted(
        task.workflow[node_id]["inputs"]["image"] for node_id, ref in refs.items() if ref in wanted - held
    )
    if missing:
        names = ", ".join(missing)
        raise InputsDeleted(
            f"This task cannot run again: its upload(s) {names} were deleted. Upload them again and submit "
            "the workflow anew."
        )


def input_image_delete(*, upload: InputImage) -> None:
    """Delete an upload, and its file once the transaction commits (a rollback keeps both). Refused with
    UploadInUse (409), naming them, while queued, leased or running tasks need it: a worker fetches it under
    its lease. A finished task that used it keeps its workflow, history and images (they name the upload by
    its ComfyUI name); only its record of the upload (Task.input_images) goes, so it can no longer be retried
    (task_inputs_hold)."""
    with transaction.atomic():
        row = InputImage.objects.select_for_update().filter(pk=upload.pk).first()
        if row is None:
            raise NotFound("No such upload.")
        # Read after the lock: a submit that names the upload holds it (inputs_hold) until its task is queued.
        needing = Task.objects.filter(input_images=row, status__in=NEEDS_INPUTS).order_by("id")
        task_ids = [str(public_id) for public_id in needing.values_list("public_id", flat=True)]
        if task_ids:
            shown = ", ".join(task_ids[:5]) + (f" and {len(task_ids) - 5} more" if len(task_ids) > 5 else "")
            raise UploadInUse(
                f"{row.comfy_name} is needed by {len(task_ids)} queued or running task(s): {shown}. Delete "
                "it once they have ended, or cancel them first.",
                fields={"tasks": task_ids},
            )
        name = row.file.name
        row.delete()  # with its rows in Task.input_images
        transaction.on_commit(partial(files_delete, [name]))
    logger.info("upload %s deleted", upload.public_id)


def input_images_purge_temp(*, now: datetime | None = None, batch: int = 500) -> int:
    """Delete `type=temp` uploads older than TEMP_UPLOAD_HOURS (ComfyUI empties its temp folder on restart),
    but those a queued, leased or running task needs; their files once each batch commits. Off (0) while
    TEMP_UPLOAD_HOURS is 0. Rows a submit holds (inputs_hold) are skipped, and taken by a later run."""
    hours = settings.T2I["TEMP_UPLOAD_HOURS"]
    if not hours:
        return 0
    cutoff = (now or timezone.now()) - timedelta(hours=hours)
    expired = InputImage.objects.filter(kind="temp", created_at__lt=cutoff)  # input_image_kind_age_idx
    expired = expired.exclude(tasks__status__in=NEEDS_INPUTS)
    total, after = 0, 0
    while True:
        with transaction.atomic():
            locked = expired.filter(pk__gt=after).order_by("pk").select_for_update(skip_locked=True)
            ids = list(locked.values_list("pk", flat=True)[:batch])
            if not ids:
                break
            after = ids[-1]
            # Read after the lock, as input_image_delete does: a task queued meanwhile keeps its upload.
            needed = Task.input_images.through.objects.filter(
                inputimage_id__in=ids, task__status__in=NEEDS_INPUTS
            ).values_list("inputimage_id", flat=True)
            doomed = InputImage.objects.filter(pk__in=set(ids) - set(needed))
            files = list(doomed.values_list("file", flat=True))
            doomed.delete()
            transaction.on_commit(partial(files_delete, files))
        total += len(files)
        if len(ids) < batch:
            break
    if total:
        logger.info("retention: deleted %d temp upload(s) made before %s", total, cutoff.isoformat())
    return total
