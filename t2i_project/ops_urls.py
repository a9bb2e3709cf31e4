"""Operations endpoints: /metrics (Prometheus) and /healthz (JSON)."""

from django.urls import path

from t2i_project import observability

urlpatterns = [
    path("metrics", observability.metrics, name="metrics"),
    path("healthz", observability.healthz, name="healthz"),
]
