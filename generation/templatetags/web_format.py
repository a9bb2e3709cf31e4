"""Small display helpers for the web pages."""

from datetime import datetime

from django import template
from django.utils import timezone

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
