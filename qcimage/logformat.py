"""How log lines look, defined once for the app and gunicorn.conf.py: json or text.

Imported by gunicorn's master when it sets its loggers up, so nothing here needs the
app's dependencies (metrics, Flask extensions) or ImageMagick.
"""

from __future__ import annotations

import logging
import re

LOG_FORMATS = ("json", "text")
# The JSON line's fields, as the app and gunicorn both write them.
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
_JSON_NAMES = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}


def default_log_format(env: str) -> str:
    """Text for a person at a terminal in development, JSON for log shippers otherwise."""
    return "text" if env == "development" else "json"


def json_formatter() -> logging.Formatter:
    """One JSON object per line, with the field names every qcimage line uses."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(_JSON_FIELDS, rename_fields=_JSON_NAMES)


# C0 and C1 controls, DEL and the Unicode line/paragraph separators: anything a terminal
# or a log shipper could take for the end of a line (or a colour change).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` on one line: each control character written as its Python escape."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.split("\n"))


class EscapingFormatter(logging.Formatter):
    """A text formatter whose records stay one line each, whatever a request put in them.

    A path holding CR/LF (``/x%0d%0aforged``) would otherwise write a second, forged
    line. JSON lines escape by construction. A traceback keeps its own line breaks, but
    each of its lines is indented, so none can pass for a new record.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(stack_info)
