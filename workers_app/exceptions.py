"""Worker-side domain errors (see generation.exceptions for the base classes)."""

from generation.exceptions import Conflict, Forbidden


class WorkerDisabled(Forbidden):
    code = "worker_disabled"


class RegisterRequired(Conflict):
    """The scheduler considers the worker offline (or never saw it register): register again."""

    code = "register_required"
