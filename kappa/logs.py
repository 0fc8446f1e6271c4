"""Logging set-up for the ``kappa`` process: plain text (default) or one JSON object per line.

``KAPPA_LOG_FORMAT=json`` makes every record a single line of JSON on stderr
(``ts`` in UTC ISO-8601 with milliseconds, ``level``, ``logger``, ``msg``, any
``extra={...}`` fields, and ``exc`` with the formatted traceback), which log
shippers (Loki, Fluent Bit, CloudWatch) parse without a regex. ``KAPPA_LOG_LEVEL``
sets the root level (default ``INFO``). Stdout stays reserved for the
command's JSON result.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from kappa.errors import ConfigError

FORMATS = ("text", "json")
_HANDLER_NAME = "kappa-root"
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; never raises on a field it cannot serialise."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single line (newlines inside values are escaped)."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(env: Mapping[str, str] | None = None, *, stream: TextIO | None = None) -> str:
    """Configure the root logger from ``KAPPA_LOG_FORMAT`` / ``KAPPA_LOG_LEVEL``; idempotent.

    Calling it again replaces the handler it installed (never stacks a second
    one) and leaves handlers that others installed alone.

    Returns:
        The format in effect (``"text"`` or ``"json"``).

    Raises:
        ConfigError: Unknown format or level.
    """
    env = os.environ if env is None else env
    fmt = (env.get("KAPPA_LOG_FORMAT") or "text").strip().lower()
    if fmt not in FORMATS:
        msg = f"KAPPA_LOG_FORMAT must be one of {', '.join(FORMATS)}, got {fmt!r}"
        raise ConfigError(msg)
    level_name = (env.get("KAPPA_LOG_LEVEL") or "INFO").strip().upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        msg = f"KAPPA_LOG_LEVEL must be a logging level (DEBUG, INFO, WARNING, ERROR), got {level_name!r}"
        raise ConfigError(msg)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    return fmt
