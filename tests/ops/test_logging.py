"""LOG_LEVEL governs every logger, Django's own included; django-axes's start-up line stays out."""

import logging
import os
import subprocess
import sys


def test_djangos_loggers_follow_log_level():
    """Under LOG_LEVEL=WARNING (what `make run` sets) Daphne's access line for a 200 is not written."""
    code = (
        "import django, logging; django.setup(); log = logging.getLogger('django.channels.server'); "
        "print(log.isEnabledFor(logging.INFO), log.isEnabledFor(logging.WARNING))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "t2i_project.settings_test", "LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "True"], done.stderr


def test_axes_does_not_announce_itself_on_every_command():
    assert not logging.getLogger("axes.apps").isEnabledFor(logging.INFO)
    assert logging.getLogger("axes.handlers.database").isEnabledFor(logging.WARNING)  # lockouts still show
