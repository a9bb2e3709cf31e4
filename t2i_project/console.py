"""The operations console: Django's admin under the farm's name, with the farm's sections first.

`FarmAdminConfig` replaces "django.contrib.admin" in INSTALLED_APPS so that `admin.site` (and every
`@admin.register`) is a `FarmAdminSite`.
"""

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.urls import NoReverseMatch, reverse

# Sections in the order an operator needs them; anything not named here follows, alphabetically.
APP_ORDER = ["workers_app", "generation", "auth", "axes", "django_q"]
MODEL_ORDER = {
    "generation": ["Task", "Image", "WorkflowTemplate", "WebhookDelivery"],
}
DASHBOARD_URL_NAME = "generation_dashboard"


def _position(order: list[str], name: str) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name.lower())


class FarmAdminSite(admin.AdminSite):
    site_header = "Render farm console"
    site_title = "Render farm console"
    index_title = "Workers, tasks and images"
    enable_nav_sidebar = True

    def get_app_list(self, request, app_label=None) -> list[dict]:
        """The farm's sections first (workers, then tasks, images, templates, webhooks and the dashboard),
        accounts, tokens, login lockouts and the job runner after."""
        apps = sorted(
            self._build_app_dict(request, app_label).values(),
            key=lambda app: _position(APP_ORDER, app["app_label"]),
        )
        for app in apps:
            order = MODEL_ORDER.get(app["app_label"], [])
            app["models"].sort(key=lambda model: _position(order, model["object_name"]))
            if app["app_label"] == "generation":  # the dashboard after the farm's own lists, before the rest
                farm = sum(1 for model in app["models"] if model["object_name"] in order)
                app["models"][farm:farm] = self._dashboard_entry(app)
        return apps

    def _dashboard_entry(self, app: dict) -> list[dict]:
        """The farm dashboard as a row of the Generation section (for whoever may view tasks)."""
        task = next((m for m in app["models"] if m["object_name"] == "Task"), None)
        if task is None:
            return []
        try:
            url = reverse(f"{self.name}:{DASHBOARD_URL_NAME}", current_app=self.name)
        except NoReverseMatch:
            return []
        return [
            {
                "model": None,
                "name": "Farm dashboard",
                "object_name": "Dashboard",
                "perms": {"view": True},
                "admin_url": url,
                "add_url": None,
                "view_only": True,
            }
        ]


class FarmAdminConfig(AdminConfig):
    default_site = "t2i_project.console.FarmAdminSite"
