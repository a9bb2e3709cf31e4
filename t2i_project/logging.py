"""JSON log lines (LOG_JSON=1): one object per line, with task and worker ids when a call passes them."""

import json
import logging
import re
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; `extra={"task": ..., "worker": ...}` become fields."""

    FIELDS = ("task", "worker", "attempt")

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in self.FIELDS:
            if hasattr(record, field):
                payload[field] = str(getattr(record, field))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """Control characters (newlines, ANSI escapes) as Python escapes: text from users and workers cannot
    forge a log line or recolour a terminal."""
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class PlainFormatter(logging.Formatter):
    """The plain text format, with ` task=… worker=…` appended when the call passed them in `extra`. The line
    is one line: control characters in the message and the fields are escaped (a traceback still follows on
    lines of its own). The JSON format escapes them anyway."""

    FIELDS = JsonFormatter.FIELDS

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{f}={escape_controls(str(getattr(record, f)))}" for f in self.FIELDS if hasattr(record, f)
        )
        if not context:
            return line
        # Keep a traceback below the line it belongs to.
        head, sep, tail = line.partition("\n")
        return f"{head} {context}{sep}{tail}"
