"""Logging of the command line: readable text for people, or one JSON object a line for log shippers.

Records may carry `session` and `client` (the session id and the client's address) as extra
fields; the text format shows them when present, the JSON format always has both keys.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

CONTEXT_FIELDS = ("session", "client")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"
_JSON_FIELDS = ("levelname", "name", "message", *CONTEXT_FIELDS)
# Libraries that log every request or ICE check at INFO: their warnings only, unless DEBUG.
CHATTY_LOGGERS = ("aiohttp.access", "aiohttp.server", "websockets", "aioice", "aiortc")


class _TextFormatter(logging.Formatter):
    """The text format, with ` [session=.. client=..]` after the logger name when known."""

    def format(self, record: logging.LogRecord) -> str:
        values = ((name, getattr(record, name, None)) for name in CONTEXT_FIELDS)
        parts = [f"{name}={value}" for name, value in values if value is not None]
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


class _ContextDefaults(logging.Filter):
    """Every JSON record has the context keys (null when unknown), so shippers see one schema."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, None)
        return True


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Configure the root logger once, on stderr, as `text` or `json`."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.addFilter(_ContextDefaults())
        handler.setFormatter(
            JsonFormatter(list(_JSON_FIELDS), rename_fields={"levelname": "level", "name": "logger"}, timestamp="time")
        )
    elif log_format == "text":
        handler.setFormatter(_TextFormatter(_TEXT_FORMAT))
    else:
        raise ValueError(f"unknown log format {log_format!r}: expected 'text' or 'json'")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    if level != "DEBUG":
        for chatty in CHATTY_LOGGERS:
            logging.getLogger(chatty).setLevel(logging.WARNING)
