"""Operations endpoints: /metrics and /healthz."""

urlpatterns: list = []
