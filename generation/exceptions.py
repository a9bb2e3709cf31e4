"""Domain errors. One DRF exception handler (generation.api_errors) turns each into a JSON 4xx."""

from http import HTTPStatus


class DomainError(Exception):
    """A rule of the farm was broken; `code` is stable, `detail` is for people, `fields` names inputs."""

    status = HTTPStatus.BAD_REQUEST
    code = "invalid"

    def __init__(
        self,
        detail: str,
        *,
        fields: dict | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields or {}
        if code:
            self.code = code
        self.retry_after = retry_after  # seconds, sent as Retry-After


class InvalidInput(DomainError):
    pass


class NotFound(DomainError):
    status = HTTPStatus.NOT_FOUND
    code = "not_found"


class Forbidden(DomainError):
    status = HTTPStatus.FORBIDDEN
    code = "forbidden"


class Conflict(DomainError):
    status = HTTPStatus.CONFLICT
    code = "conflict"


class LeaseLost(Conflict):
    """The lease token is stale or not this worker's: the call changes nothing."""

    code = "lease_lost"


class NoCapableWorker(InvalidInput):
    code = "no_capable_worker"


class WorkerDisabled(Forbidden):
    code = "worker_disabled"


class RegisterRequired(Conflict):
    """The scheduler considers the worker offline (or never saw it register): register again."""

    code = "register_required"


class TooMany(DomainError):
    """A worker asked for more than its prefetch depth allows: back off and retry."""

    status = HTTPStatus.TOO_MANY_REQUESTS
    code = "too_many"


class TooManyWaits(TooMany):
    code = "too_many_waits"


class TooManyLeases(TooMany):
    code = "too_many_leases"


class Throttled(TooMany):
    """More submits than T2I_SUBMIT_RATE allows in this window."""

    code = "throttled"


class QueueFull(TooMany):
    """The user already has T2I_MAX_QUEUED_PER_USER tasks queued."""

    code = "queue_full"


class Unavailable(DomainError):
    """Something the request needs (the shared cache) does not answer: retry shortly."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "unavailable"


class WorkflowRejected(InvalidInput):
    """A whole workflow the farm cannot run; `problem` says why in ComfyUI's shapes (api_workflows)."""

    code = "workflow_invalid"

    def __init__(self, problem, *, field: str = "workflow") -> None:
        super().__init__(problem.messages()[0], fields={field: problem.messages()})
        self.problem = problem


class TooLarge(DomainError):
    """More bytes than a setting allows (a task's uploads together)."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "too_large"


class TooManyCompletions(TooMany):
    code = "too_many_completions"


class InsufficientStorage(DomainError):
    """The media storage is full (or below T2I_MEDIA_MIN_FREE_BYTES): nothing was stored; retry later."""

    status = HTTPStatus.INSUFFICIENT_STORAGE
    code = "insufficient_storage"


class UploadInUse(Conflict):
    """An upload that a queued or running task still needs: deleting it would break that task."""

    code = "upload_in_use"


class InputsDeleted(Conflict):
    """A task cannot run again: an upload its workflow names was deleted after it ended."""

    code = "inputs_deleted"
