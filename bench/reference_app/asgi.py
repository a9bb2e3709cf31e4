"""The reference app's ASGI entry: Django's own handler (t2i_project.asgi names the scheduler's URLs, which
the reference's URLconf does not have), with a connection pool as the scheduler has under ASGI."""

import os

os.environ["REFERENCE_ASGI"] = "1"

from django.core.asgi import get_asgi_application

application = get_asgi_application()
