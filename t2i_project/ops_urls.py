"""Operations endpoints: /metrics (Prometheus) and /healthz (JSON)."""

from django.urls import path

from generation import ops_views

urlpatterns = [
    path("metrics", ops_views.metrics, name="metrics"),
    path("healthz", ops_views.healthz, name="healthz"),
]
