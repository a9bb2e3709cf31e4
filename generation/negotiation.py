"""Content negotiation for views whose answers are JSON whatever the client's `Accept` says."""

from rest_framework.negotiation import DefaultContentNegotiation


class JsonAnswers(DefaultContentNegotiation):
    """Answer with the view's first renderer (JSON) whatever `Accept` says: DRF's documented "ignore the
    client" negotiation. Worker daemons read JSON only (and the header is not parsed on every lease and
    progress report); an event stream's client asks for text/event-stream, and its errors (401, 404) are
    JSON. Request bodies are still matched against the parsers, so a wrong Content-Type stays a 415."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
