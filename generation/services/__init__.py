"""Every state change of a task. The REST API, the seed endpoints, the admin, the web pages and the
background jobs all call these functions: one rule, one place. By lifecycle:

- submit: what people do (submit, cancel, retry, priority, templates, deleting images);
- submit_limit: how many submits a user (or an address) may make in a window, counted across processes;
- leasing: handing tasks to workers, and what a worker reports while it runs one;
- completion_slots: how many completions of one worker may run at once, across processes;
- completion: how a lease ends from the worker's side (completed, failed, handed back);
- maintenance: leases that outlived their worker;
- deletion: tasks deleted for good with their files (retention, an account's deletion);
- api_tokens: users' REST API tokens (made, looked up by hash, revoked);
- transitions: the fenced end of a lease and the worker's counters, which the others share.
"""

from generation.services.api_tokens import api_token_create, api_token_revoke, api_token_user
from generation.services.completion import (
    Completion,
    task_complete,
    task_complete_and_lease,
    task_fail,
    task_release,
)
from generation.services.completion_slots import completion_slot
from generation.services.deletion import files_delete, tasks_delete, user_delete
from generation.services.leasing import (
    TaskLease,
    task_lease_next,
    task_report_progress,
    task_start,
    task_workflow,
    worker_assert_live,
)
from generation.services.maintenance import tasks_reap_expired, tasks_requeue_for_worker
from generation.services.submit import (
    image_deletable_by,
    image_delete,
    task_cancel,
    task_retry,
    task_set_priority,
    task_submit,
    template_create,
)
from generation.services.submit_limit import submit_claim
from generation.services.transitions import farm_setting, worker_count_outcome

__all__ = [
    "Completion",
    "TaskLease",
    "api_token_create",
    "api_token_revoke",
    "api_token_user",
    "completion_slot",
    "farm_setting",
    "files_delete",
    "image_deletable_by",
    "image_delete",
    "submit_claim",
    "task_cancel",
    "task_complete",
    "task_complete_and_lease",
    "task_fail",
    "task_lease_next",
    "task_release",
    "task_report_progress",
    "task_retry",
    "task_set_priority",
    "task_start",
    "task_submit",
    "task_workflow",
    "tasks_delete",
    "tasks_reap_expired",
    "tasks_requeue_for_worker",
    "template_create",
    "user_delete",
    "worker_assert_live",
    "worker_count_outcome",
]
