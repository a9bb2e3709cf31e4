"""Selector for the operators: queued tasks that no online worker can be handed, each with why (per worker:
the node class or model it lacks). The rules are those of the lease path (generation.inventory.why_not)."""

from __future__ import annotations

from dataclasses import dataclass

from generation import inventory, workflows
from generation.models import Task, WorkflowTemplate
from workers_app.models import Worker

SHOWN = 200  # queued tasks looked at, oldest first by priority: the admin page is a diagnosis, not a report


@dataclass(frozen=True)
class Unrunnable:
    task: Task
    reasons: list[tuple[str, str]]  # (worker name, what it lacks); ("", why) when no worker is online


def queued_unrunnable(*, limit: int = SHOWN) -> list[Unrunnable]:
    """The first `limit` queued tasks (by priority, then age) that no worker taking work could run."""
    online = list(
        Worker.objects.filter(status=Worker.Status.IDLE).order_by("name").only("name", "capabilities")
    )
    classes = {t.pk: workflows.node_classes(t.workflow) for t in WorkflowTemplate.objects.order_by()}
    queued = Task.objects.filter(status=Task.Status.QUEUED).order_by("-priority", "id")
    found = []
    fields = ("public_id", "template_id", "checkpoint", "requirements", "priority", "created_at", "prompt")
    for task in queued.only(*fields)[:limit]:
        if not online:
            found.append(Unrunnable(task, [("", "no worker is online")]))
            continue
        template_classes = None if task.template_id is None else classes.get(task.template_id, set())
        reasons = []
        for worker in online:
            why = inventory.why_not(
                worker.capabilities or {},
                template_classes=template_classes,
                checkpoint=task.checkpoint,
                requirements=task.requirements,
            )
            if why is None:
                break
            reasons.append((worker.name, why))
        else:
            found.append(Unrunnable(task, reasons))
    return found
