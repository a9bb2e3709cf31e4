"""What follows a finished task, run after its transaction commits: thumbnails, then the webhook.

Failures here never undo the task: a missing thumbnail is made again by the periodic job.
"""

import logging

from generation.models import Image, Task
from generation.thumbnails import image_make_thumbnail
from generation.webhooks import webhook_enqueue

logger = logging.getLogger(__name__)


def task_finished(task_pk: int) -> None:
    for image in Image.objects.filter(task_id=task_pk, thumbnail=""):
        try:
            image_make_thumbnail(image=image)
        except Exception:
            logger.exception("thumbnail failed for image %s", image.pk)
    try:
        task = Task.objects.filter(pk=task_pk).exclude(callback_url="").first()
        if task is not None:
            webhook_enqueue(task=task)
    except Exception:
        logger.exception("webhook not recorded for task %s", task_pk)
