from django.urls import path

from workers_app import apis
from workers_app.long_poll import long_poll

app_name = "worker-api"

urlpatterns = [
    path("register", apis.RegisterApi.as_view(), name="register"),
    path("inventory", apis.InventoryApi.as_view(), name="inventory"),
    path("object_info/<str:sha256>", apis.ObjectInfoApi.as_view(), name="object-info"),
    path("heartbeat", apis.HeartbeatApi.as_view(), name="heartbeat"),
    path("lease", long_poll(apis.LeaseApi), name="lease"),
    path("offline", apis.OfflineApi.as_view(), name="offline"),
    path("tasks/<uuid:task_id>/start", apis.TaskStartApi.as_view(), name="start"),
    path("tasks/<uuid:task_id>/progress", apis.TaskProgressApi.as_view(), name="progress"),
    path("tasks/<uuid:task_id>/frames", apis.TaskFramesApi.as_view(), name="frames"),
    path("tasks/<uuid:task_id>/inputs/<str:sha256>", apis.TaskInputApi.as_view(), name="input"),
    path("tasks/<uuid:task_id>/complete", apis.TaskCompleteApi.as_view(), name="complete"),
    path("tasks/<uuid:task_id>/fail", apis.TaskFailApi.as_view(), name="fail"),
    path("tasks/<uuid:task_id>/release", apis.TaskReleaseApi.as_view(), name="release"),
]
