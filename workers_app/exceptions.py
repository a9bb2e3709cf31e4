"""Worker-side domain errors. They live in generation.exceptions, beside the leasing rules that raise them."""

from generation.exceptions import RegisterRequired, WorkerDisabled

__all__ = ["RegisterRequired", "WorkerDisabled"]
