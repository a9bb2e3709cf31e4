"""The login lockout's second limit: django-axes counts failures per (username, address) pair; this handler
also counts every failure from one address, whatever the usernames, so one machine cannot try a few
passwords on every account. T2I_LOGIN_ADDRESS_FAILURE_LIMIT failures from an address within the cool-off
lock that address out (429, everyone signing in from it) until T2I_LOGIN_LOCKOUT_MINUTES have passed since
the last one. A success resets only its own pair's count, so signing into one's own account does not
clear the address's."""

from axes.attempts import get_cool_off_threshold
from axes.handlers.database import AxesDatabaseHandler
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest


class LockoutHandler(AxesDatabaseHandler):
    def get_failures(self, request: HttpRequest, credentials: dict | None = None) -> int:
        """The pair's failures, or the pair limit (locked) once the address's reach the address limit."""
        pair = super().get_failures(request, credentials)
        if address_failures(request) >= settings.LOGIN_ADDRESS_FAILURE_LIMIT:
            return max(pair, settings.AXES_FAILURE_LIMIT)
        return pair


def address_failures(request: HttpRequest) -> int:
    """Failed sign-ins from this request's address (any username) within the cool-off."""
    attempts = AccessAttempt.objects.filter(
        ip_address=request.axes_ip_address, attempt_time__gte=get_cool_off_threshold(request)
    )
    return attempts.aggregate(n=Sum("failures_since_start"))["n"] or 0
