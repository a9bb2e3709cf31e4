"""WSGI entry point (gunicorn t2i_project.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "t2i_project.settings")
application = get_wsgi_application()
