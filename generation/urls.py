from django.urls import path

from generation import apis
from generation.streams import event_stream

app_name = "api"

urlpatterns = [
    path("tasks/", apis.TaskListCreateApi.as_view(), name="task-list"),
    path("tasks/events", event_stream(apis.MyTaskEventsApi), name="task-events-mine"),
    path("tasks/<uuid:task_id>/", apis.TaskDetailApi.as_view(), name="task-detail"),
    path("tasks/<uuid:task_id>/events", event_stream(apis.TaskEventsApi), name="task-events"),
    path("tasks/<uuid:task_id>/preview", apis.TaskPreviewApi.as_view(), name="task-preview"),
    path("tasks/<uuid:task_id>/cancel/", apis.TaskCancelApi.as_view(), name="task-cancel"),
    path("uploads/", apis.UploadListApi.as_view(), name="upload-list"),
    path("uploads/<uuid:upload_id>/", apis.UploadDetailApi.as_view(), name="upload-detail"),
    path("uploads/<uuid:upload_id>/file", apis.UploadFileApi.as_view(), name="upload-file"),
    path("templates/", apis.TemplateListCreateApi.as_view(), name="template-list"),
    path("templates/<slug:name>/", apis.TemplateDetailApi.as_view(), name="template-detail"),
    path("workers/", apis.WorkerListApi.as_view(), name="worker-list"),
    path("checkpoints/", apis.CheckpointListApi.as_view(), name="checkpoint-list"),
]
