"""Every state change of a task. The REST API, the seed endpoints, the admin, the web pages and the
background jobs all call these functions: one rule, one place. By lifecycle:

- submit: what people do (submit, cancel, retry, priority, templates, deleting images);
- workflow_submit: a whole API-format workflow as a task (checked against the workers' inventory);
- submit_limit: how many submits a user (or an address) may make in a window, counted across processes;
- leasing: handing tasks to workers, and what a worker reports while it runs one;
- completion_slots: how many completions of one worker may run at once, across processes;
- completion: how a lease ends from the worker's side (completed, failed, handed back);
- inputs: images uploaded for LoadImage nodes (stored per owner, needed by a workflow, fetched by a worker,
  deleted by their owner or, when temp, by the retention job; never while an unfinished task needs them);
- frames: ComfyUI socket frames a worker relays for a front-door client;
- comfy_history: finished prompts taken out of a front-door client's ComfyUI history (POST /comfy/history);
- missing_model: a prompt refused for a model the worker lacks (requeued elsewhere, not counted);
- maintenance: leases that outlived their worker;
- deletion: tasks deleted for good with their files (retention, an account's deletion);
- api_tokens: users' REST API tokens (made, looked up by hash, revoked);
- transitions: the fenced end of a lease and the worker's counters, which the others share.
"""

from generation.services.api_tokens import api_token_create, api_token_revoke, api_token_user
from generation.services.comfy_history import comfy_history_hide
from generation.services.completion import (
    Completion,
    task_complete,
    task_complete_and_lease,
    task_fail,
    task_release,
)
from generation.services.completion_slots import completion_slot
from generation.services.deletion import files_delete, tasks_delete, user_delete
from generation.services.frames import task_relay_frames
from generation.services.inputs import (
    input_image_delete,
    input_image_for_worker,
    input_image_mask_upload,
    input_image_upload,
    input_images_purge_temp,
    workflow_with_uploads,
)
from generation.services.leasing import (
    TaskLease,
    task_lease_next,
    task_report_progress,
    task_start,
    task_workflow,
    worker_assert_live,
)
from generation.services.maintenance import tasks_reap_expired, tasks_requeue_for_worker
from generation.services.missing_model import MODEL_MISSING, task_fail_model_missing
from generation.services.submit import (
    image_deletable_by,
    image_delete,
    task_cancel,
    task_retry,
    task_set_priority,
    task_submit,
    tasks_cancel,
    template_create,
)
from generation.services.submit_limit import submit_claim
from generation.services.transitions import farm_setting, worker_count_outcome
from generation.services.workflow_submit import comfy_prompt_submit, task_submit_workflow

__all__ = [
    "MODEL_MISSING",
    "Completion",
    "TaskLease",
    "api_token_create",
    "api_token_revoke",
    "api_token_user",
    "comfy_history_hide",
    "comfy_prompt_submit",
    "completion_slot",
    "farm_setting",
    "files_delete",
    "image_deletable_by",
    "image_delete",
    "input_image_delete",
    "input_image_for_worker",
    "input_image_mask_upload",
    "input_image_upload",
    "input_images_purge_temp",
    "submit_claim",
    "task_cancel",
    "task_complete",
    "task_complete_and_lease",
    "task_fail",
    "task_fail_model_missing",
    "task_lease_next",
    "task_relay_frames",
    "task_release",
    "task_report_progress",
    "task_retry",
    "task_set_priority",
    "task_start",
    "task_submit",
    "task_submit_workflow",
    "task_workflow",
    "tasks_cancel",
    "tasks_delete",
    "tasks_reap_expired",
    "tasks_requeue_for_worker",
    "template_create",
    "user_delete",
    "worker_assert_live",
    "worker_count_outcome",
    "workflow_with_uploads",
]
