"""Helpers that both apps' admin pages use: status badges, short durations, and actions as buttons.

They live in generation (which workers_app may import) so that generation.admin never imports
workers_app.admin, which imports generation.dashboard.
"""

from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.urls import path
from django.utils.html import format_html


def status_badge(label: str, colour: str):
    return format_html(
        '<span style="display:inline-block;padding:1px 8px;border-radius:9px;background:{};color:#fff;'
        'font-weight:600;font-size:11px;white-space:nowrap">{}</span>',
        colour,
        label,
    )


def seconds_text(seconds: float | None) -> str:
    """12 s, 3 m 20 s, 2 h 05 m: short durations for tables."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


class ObjectActionsMixin:
    """The list's actions as buttons on an object's page: POST <pk>/do/<action>/ runs the same admin action
    on that one row (so the same service and the same messages), then returns to the page."""

    object_actions: dict[str, str] = {}  # action name: button label

    def object_action_applies(self, obj, action: str) -> bool:
        """Whether the button for `action` belongs on `obj`'s page (in its current state)."""
        return True

    def get_urls(self):
        opts = self.model._meta
        view = self.admin_site.admin_view(self.object_action_view)
        name = f"{opts.app_label}_{opts.model_name}_object_action"
        return [path("<int:pk>/do/<str:action>/", view, name=name), *super().get_urls()]

    def object_action_view(self, request, pk: int, action: str):
        if request.method != "POST" or action not in self.object_actions:
            raise PermissionDenied
        func, _, _ = self.get_actions(request).get(action) or (None, None, None)
        if func is None:
            raise PermissionDenied
        response = func(self, request, self.get_queryset(request).filter(pk=pk))
        if response is not None:  # an action that answers with a page of its own (as in the list)
            return response
        opts = self.model._meta
        return redirect(f"admin:{opts.app_label}_{opts.model_name}_change", pk)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        actions = self.get_actions(request)
        obj = self.get_object(request, unquote(object_id))
        buttons = [
            (name, label)
            for name, label in self.object_actions.items()
            if name in actions and obj is not None and self.object_action_applies(obj, name)
        ]
        opts = self.model._meta
        extra_context = {
            **(extra_context or {}),
            "object_actions": buttons,
            "object_action_url": f"admin:{opts.app_label}_{opts.model_name}_object_action",
        }
        return super().change_view(request, object_id, form_url, extra_context)
