"""ComfyUI's POST /history on the front door: finished prompts taken out of a client's ComfyUI history."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from generation import comfy_selectors
from generation.models import Task


def comfy_history_hide(
    *, user: AbstractBaseUser | AnonymousUser, prompt_ids: Sequence[str] = (), clear: bool = False
) -> int:
    """Take finished prompts of `user`'s space (generation.comfy_selectors.space) out of its ComfyUI history:
    all of them (`clear`), else those `prompt_ids` name (the client's ids or the farm's; unknown ones are
    ignored, as ComfyUI ignores them). A queued or running prompt is not touched: it gets its entry when it
    ends, as in ComfyUI. The task, its images and their files stay: the web pages, the REST API and /view
    still have them. How many prompts were taken out."""
    shown = comfy_selectors.space(user).filter(
        status__in=Task.FINISHED_STATUSES, comfy_history_hidden_at=None
    )
    if not clear:
        if not prompt_ids:
            return 0
        shown = shown.filter(_named(prompt_ids))
    with transaction.atomic():
        return shown.update(comfy_history_hidden_at=timezone.now())


def _named(prompt_ids: Sequence[str]) -> Q:
    """The tasks the ids name, as generation.comfy_selectors.by_prompt_id does one."""
    farm_ids = set()
    for prompt_id in prompt_ids:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            farm_ids.add(uuid.UUID(prompt_id))
    return Q(client_prompt_id__in=set(prompt_ids)) | Q(public_id__in=farm_ids)
