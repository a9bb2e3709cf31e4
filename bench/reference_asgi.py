"""The reference design's ASGI application, with bench.reference_served's settings (see there)."""

from django.core.asgi import get_asgi_application

application = get_asgi_application()
