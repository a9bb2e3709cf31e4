"""The farm's limits on a task's input (settings), each with the message that states it. The submit service
checks them for every caller; the submit serializer carries them, so the API schema shows them and the API
refuses with the same words. Read on each call: settings differ per deployment and per test."""

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class Limit:
    """From `low` to `high` and, when `step` is set, a multiple of it; `message` says so."""

    low: int | float
    high: int | float
    message: str
    step: int = 0

    def allows(self, value: int | float) -> bool:
        return self.low <= value <= self.high and not (self.step and value % self.step)


def numbers() -> dict[str, Limit]:
    """The numeric input fields and their limits."""
    farm = settings.T2I
    lo, hi, step = farm["SIZE_MIN"], farm["SIZE_MAX"], farm["SIZE_MULTIPLE"]
    size = Limit(lo, hi, f"Must be a multiple of {step} from {lo} to {hi}.", step)
    steps, batch = farm["STEPS_MAX"], farm["BATCH_MAX"]
    return {
        "width": size,
        "height": size,
        "steps": Limit(1, steps, f"Must be from 1 to {steps}."),
        "cfg": Limit(0, 100, "Must be from 0 to 100."),
        "batch_size": Limit(1, batch, f"Must be from 1 to {batch}."),
        "priority": Limit(-1000, 1000, "Must be from -1000 to 1000."),
    }


def lengths() -> dict[str, Limit]:
    """The text input fields and the limits of their length."""
    longest = settings.T2I["PROMPT_MAX_LENGTH"]
    limit = Limit(0, longest, f"At most {longest} characters.")
    return {"prompt": limit, "negative_prompt": limit}
