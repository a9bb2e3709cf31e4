"""The original design's worker endpoints over the same services: `POST /register`, `/heartbeat`,
`/task` and `/complete`. Workers still authenticate with their token (Authorization: Bearer …).

`/complete` also accepts the seed's request without a lease token: the lease is then the one this worker
holds on that task, so the call is still fenced by the worker's identity. That exception to "every call names
its lease" is on by default for the seed's daemons; T2I_SEED_COMPLETE_WITHOUT_LEASE=0 turns it off.
"""

import uuid

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework.parsers import FormParser, JSONParser
from rest_framework.request import Request
from rest_framework.response import Response

from generation.exceptions import InvalidInput, LeaseLost
from generation.models import Task, TaskAttempt
from workers_app.apis import (
    CompleteInput,
    CompleteOutput,
    HeartbeatInput,
    HeartbeatOutput,
    LeaseApi,
    LeaseOutput,
    RegisterInput,
    RegisterOutput,
    WorkerApi,
    complete,
    heartbeat,
    register,
)
from workers_app.parsers import ImageUploadParser


class SeedRegisterApi(WorkerApi):
    @extend_schema(request=RegisterInput, responses=RegisterOutput)
    def post(self, request: Request) -> Response:
        worker = register(request, self.worker)
        return Response({**RegisterOutput(worker).data, "registered": True})


class SeedHeartbeatApi(WorkerApi):
    @extend_schema(request=HeartbeatInput, responses=HeartbeatOutput)
    def post(self, request: Request) -> Response:
        return Response({"status": "ok", **heartbeat(self.worker, request.data)})


class SeedTaskApi(LeaseApi):
    """The seed's `POST /task`: a lease, answered with the task id also as `prompt_id`."""

    @staticmethod
    def lease_answer(result) -> dict:
        data = LeaseOutput(result).data
        return {"prompt_id": data["task_id"], **data}


class SeedCompleteApi(WorkerApi):
    parser_classes = [ImageUploadParser, FormParser, JSONParser]

    @extend_schema(request={"multipart/form-data": CompleteInput}, responses=CompleteOutput)
    def post(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            raise InvalidInput(
                "The body must be an object.", fields={"non_field_errors": ["Expected an object."]}
            )
        prompt_id = request.data.get("prompt_id")
        if not prompt_id:
            raise InvalidInput("prompt_id is required.", fields={"prompt_id": ["This field is required."]})
        token = request.data.get("lease_token")
        if not token and not settings.T2I["SEED_COMPLETE_WITHOUT_LEASE"]:
            raise InvalidInput(
                "lease_token is required.", fields={"lease_token": ["This field is required."]}
            )
        if not token:
            task_id = _uuid(prompt_id)
            token = (
                Task.objects.filter(public_id=task_id, worker=self.worker, status__in=Task.ACTIVE_STATUSES)
                .values_list("lease_token", flat=True)
                .first()
            ) or (
                # A retry of a completion that already landed: the lease of this worker's completed attempt.
                TaskAttempt.objects.filter(
                    task__public_id=task_id, worker=self.worker, outcome=TaskAttempt.Outcome.COMPLETED
                )
                .values_list("lease_token", flat=True)
                .first()
            )
            if token is None:
                raise LeaseLost("This worker holds no lease on that task.")
        result = complete(request, self.worker, _uuid(prompt_id), lease_token=str(token))
        return Response({"status": "ok", **result})


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidInput("prompt_id is not a valid id.", fields={"prompt_id": ["Must be a UUID."]})
