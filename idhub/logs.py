"""One logging configuration for idhub and uvicorn, from settings: text or JSON lines on standard error.

``IDHUB_LOG_LEVEL`` (debug, info, warning, error, critical) and ``IDHUB_LOG_FORMAT`` (``text`` for people,
``json`` for log shippers: one object per line) apply to idhub's own loggers and to uvicorn's, so a
collector sees one format. Every record carries the request id of the request it was written for
(:mod:`idhub.request_context`), ``-`` outside a request. ``IDHUB_ACCESS_LOG=true`` adds one line per
request on the ``idhub.access`` logger (method, path without its query string, route template, status,
duration, caller): the query string is left out because it carries authorization codes and state.

Fields a caller passes with ``extra=`` (the security events' ``event``, ``tenant_id``...) are written as
``key=value`` pairs in text and as members in JSON.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
from typing import Any

from idhub.settings import Settings

# Attributes every LogRecord has: anything else on a record came in through ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "trace_id",
    "span_id",
    "color_message",  # uvicorn's coloured duplicate of the message
    "taskName",
}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the fields a caller attached to ``record`` with ``extra=``."""
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD and not key.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    """Return the record's time as RFC 3339 UTC with milliseconds."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-12-07T20:31:02.114Z WARNING idhub.security [3f2a...] sign-in failed event=signin.failure ...``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one line (a traceback, when there is one, follows on the next lines)."""
        line = (
            f"{_timestamp(record)} {record.levelname} {record.name} "
            f"[{getattr(record, 'request_id', '-')}] {record.getMessage()}"
        )
        fields = extra_fields(record)
        if fields:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' ="\n')) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, trace_id, the extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line of JSON."""
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            entry["request_id"] = request_id
        trace_id = getattr(record, "trace_id", None)  # set while tracing is on (idhub.tracing)
        if trace_id and trace_id != "-":
            entry["trace_id"] = trace_id
            entry["span_id"] = getattr(record, "span_id", None)
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class QuietMigrations(logging.Filter):
    """Keep Alembic's "Running upgrade 0012 -> 0013, ..." lines; drop its set-up chatter (unless debugging)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tell whether ``record`` is written."""
        if record.name != "alembic.runtime.migration" or record.levelno > logging.INFO:
            return True
        return isinstance(record.msg, str) and record.msg.startswith("Running ")


def logging_config(settings: Settings, *, level: str | None = None) -> dict[str, Any]:
    """Return the ``logging.config.dictConfig`` dictionary for ``settings`` (uvicorn applies it in each worker).

    ``level`` overrides ``IDHUB_LOG_LEVEL`` (the CLI's commands other than ``serve`` default to warnings).
    """
    formatter = "json" if settings.log_format == "json" else "text"
    level = level or settings.log_level
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "text": {"()": f"{__name__}.TextFormatter"},
            "json": {"()": f"{__name__}.JsonFormatter"},
        },
        "filters": {"migrations": {"()": f"{__name__}.QuietMigrations"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": formatter,
                "stream": "ext://sys.stderr",
                "filters": [] if level == "DEBUG" else ["migrations"],
            },
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # uvicorn's own loggers write through the root handler, in the same format.
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            # uvicorn's access log would print query strings (codes, state): idhub writes its own.
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            "idhub.access": {"level": "INFO" if settings.access_log else "WARNING", "propagate": True},
            # The audit log is in the database (and the sink); as log lines only when asked for.
            "idhub.audit": {"level": "INFO" if settings.audit.log else "WARNING", "propagate": True},
            # Third-party chatter stays at warning unless debugging.
            "aiosqlite": {"level": "WARNING" if level != "DEBUG" else "DEBUG"},
            "asyncio": {"level": "WARNING" if level != "DEBUG" else "DEBUG"},
        },
    }


def configure_logging(settings: Settings, *, level: str | None = None, force: bool = False) -> None:
    """Apply :func:`logging_config`; unless ``force``, leave an already configured root logger alone.

    A host that configured logging itself (an embedding application, pytest's capture) keeps its setup.
    """
    if not force and logging.getLogger().handlers:
        return
    logging.config.dictConfig(logging_config(settings, level=level))
