from django.conf import settings
from django.contrib import admin
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from generation import compat_apis
from workers_app import compat_apis as worker_compat
from workers_app.long_poll import long_poll


def media(request, path: str):
    """An image file under MEDIA_ROOT (read per request). `serve` refuses `..` and lists no folders."""
    return serve(request, path, document_root=settings.MEDIA_ROOT)


def favicon(request):
    """The site's icon where browsers look when a page names none (the admin, the API docs)."""
    return redirect(static("img/favicon.svg"))


# Django tries these in order on every request: the worker API (the farm's busiest) and the REST API first.
urlpatterns = [
    path("api/v1/worker/", include("workers_app.urls")),
    path("api/v1/", include("generation.urls")),
    # The ComfyUI front door: ComfyUI's routes for the whole farm, also under /api as ComfyUI serves them.
    path("comfy/api/", include(("generation.comfy_urls", "comfy-api"))),
    path("comfy/", include(("generation.comfy_urls", "comfy"))),
    path("admin/", admin.site.urls),
    path("", include("generation.web_urls")),
    path("", include("t2i_project.ops_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script as a file of its own: no inline script (CSP).
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    # Redoc's bundle loads its logo from the internet; the Swagger UI above is served from here entirely.
    path("api/redoc/", RedirectView.as_view(pattern_name="api-docs"), name="api-redoc"),
    path("favicon.ico", favicon),
    # The original design's endpoints (compatibility surface).
    path("generate", compat_apis.GenerateApi.as_view(), name="seed-generate"),
    path("status/<str:prompt_id>", compat_apis.StatusApi.as_view(), name="seed-status"),
    path("register", worker_compat.SeedRegisterApi.as_view(), name="seed-register"),
    path("heartbeat", worker_compat.SeedHeartbeatApi.as_view(), name="seed-heartbeat"),
    path("task", long_poll(worker_compat.SeedTaskApi), name="seed-task"),
    path("complete", worker_compat.SeedCompleteApi.as_view(), name="seed-complete"),
    # Images are files on this machine's disk; a LAN deployment serves them from here or from a proxy.
    path(f"{settings.MEDIA_URL.strip('/')}/<path:path>", media),
]

# JSON errors on API paths, the site's pages elsewhere (generation.api_errors.is_api_path).
handler400 = "generation.api_errors.bad_request"
handler403 = "generation.api_errors.permission_denied"
handler404 = "generation.api_errors.page_not_found"
handler500 = "generation.api_errors.server_error"
