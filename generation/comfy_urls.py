"""ComfyUI's routes, served at /comfy/ and again at /comfy/api/ (as ComfyUI serves them at / and /api/)."""

from django.urls import path

from generation import comfy_apis

urlpatterns = [
    path("prompt", comfy_apis.PromptApi.as_view(), name="prompt"),
    path("upload/image", comfy_apis.UploadImageApi.as_view(), name="upload-image"),
    path("upload/mask", comfy_apis.UploadMaskApi.as_view(), name="upload-mask"),
    path("history", comfy_apis.HistoryApi.as_view(), name="history"),
    path("history/<str:prompt_id>", comfy_apis.HistoryApi.as_view(), name="history-one"),
    path("view", comfy_apis.ViewApi.as_view(), name="view"),
    path("queue", comfy_apis.QueueApi.as_view(), name="queue"),
    path("interrupt", comfy_apis.InterruptApi.as_view(), name="interrupt"),
    path("object_info", comfy_apis.ObjectInfoApi.as_view(), name="object-info"),
    path("object_info/<str:node_class>", comfy_apis.ObjectInfoApi.as_view(), name="object-info-one"),
    path("system_stats", comfy_apis.SystemStatsApi.as_view(), name="system-stats"),
    path("features", comfy_apis.FeaturesApi.as_view(), name="features"),
    path("models", comfy_apis.ModelsApi.as_view(), name="models"),
    path("models/<str:folder>", comfy_apis.ModelsApi.as_view(), name="models-one"),
    path("embeddings", comfy_apis.EmbeddingsApi.as_view(), name="embeddings"),
]
