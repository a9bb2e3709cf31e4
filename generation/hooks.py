"""What follows a finished task, run after its transaction commits: thumbnails now, webhooks later.

Failures here never undo the task: a missing thumbnail is made again by the periodic job.
"""

import logging

from generation.models import Image
from generation.thumbnails import image_make_thumbnail

logger = logging.getLogger(__name__)


def task_finished(task_pk: int) -> None:
    for image in Image.objects.filter(task_id=task_pk, thumbnail=""):
        try:
            image_make_thumbnail(image=image)
        except Exception:
            logger.exception("thumbnail failed for image %s", image.pk)
