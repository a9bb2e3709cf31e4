"""The reference's two views: an ORM lease (SELECT ... FOR UPDATE SKIP LOCKED, then save) and an ORM complete.

No worker tokens, no attempts, no images, no checks: what "a minimal DRF view with an ORM lease" does.
"""

import uuid

from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import path
from django.utils import timezone
from rest_framework.response import Response
from rest_framework.views import APIView

from generation.models import Task


class LeaseView(APIView):
    def post(self, request):
        with transaction.atomic():
            task = (
                Task.objects.select_for_update(skip_locked=True)
                .filter(status=Task.Status.QUEUED)
                .order_by("-priority", "id")
                .first()
            )
            if task is None:
                return Response(status=204)
            task.status = Task.Status.LEASED
            task.lease_token = uuid.uuid4()
            task.leased_at = timezone.now()
            task.save(update_fields=["status", "lease_token", "leased_at"])
        return Response({"task_id": str(task.public_id), "lease_token": str(task.lease_token)})


class CompleteView(APIView):
    def post(self, request):
        try:
            done = Task.objects.filter(
                public_id=request.data["task_id"],
                lease_token=request.data["lease_token"],
                status=Task.Status.LEASED,
            ).update(status=Task.Status.COMPLETED, lease_token=None, finished_at=timezone.now())
        except (KeyError, TypeError, ValidationError):
            return Response({"detail": "task_id and lease_token (UUIDs) are required."}, status=400)
        if not done:
            return Response({"detail": "No such lease."}, status=409)
        return Response({"status": "completed"})


urlpatterns = [
    path("lease", LeaseView.as_view()),
    path("complete", CompleteView.as_view()),
]
