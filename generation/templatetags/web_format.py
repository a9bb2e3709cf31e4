"""Small display helpers for the web pages."""

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.html import conditional_escape
from django.utils.safestring import mark_safe

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """Seconds as people say them: “45 s”, “3 min 20 s”, “1 h 5 min”; an em dash when unknown."""
    if seconds is None or seconds == "":
        return "—"
    seconds = round(float(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs and minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@register.filter
def ago(moment: datetime | None) -> str:
    """“just now”, “5 min ago”, “3 h ago”, then the date."""
    if moment is None:
        return ""
    seconds = (timezone.now() - moment).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return timezone.localtime(moment).strftime("%-d %b %Y")


# What the site calls a status: a leased task has gone to a worker that has not started it yet.
STATUS_WORDS = {"leased": "Starting"}


@register.filter
def status_word(task) -> str:
    """The status badge's word for people: “Starting” rather than the scheduler's “Leased”."""
    return STATUS_WORDS.get(task.status) or task.get_status_display()


@register.filter
def name_breaks(name: str):
    """A file name that may wrap only after its separators (“v1-5-pruned-emaonly.safetensors” breaks before
    “.safetensors”, never mid-word)."""
    text = conditional_escape(name)
    for separator in ("-", "_", "/"):
        text = text.replace(separator, f"{separator}<wbr>")
    return mark_safe(text.replace(".", "<wbr>."))  # noqa: S308  (escaped above; only <wbr> is added)
