"""Argument types and JSON output shared by every ``kappa`` subcommand module."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from kappa.errors import ConfigError


def emit(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (the CLI's data channel)."""
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        msg = f"expected a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def positive_int(text: str) -> int:
    """Argparse type: a whole number >= 1."""
    value = _int(text)
    if value < 1:
        msg = f"expected a number >= 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def port(text: str) -> int:
    """Argparse type: a TCP port (0: any free one)."""
    value = _int(text)
    if not 0 <= value < 65536:
        msg = f"expected a port in 0..65535, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def share(text: str) -> float:
    """Argparse type: a share in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        msg = f"expected a number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not 0.0 <= value < 1.0:
        msg = f"expected a share in [0, 1), got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def parse_time(text: str) -> int | None:
    """``earliest`` → None, ``now`` → now, else ISO-8601 (UTC when no offset) → epoch ms."""
    value = text.strip().lower()
    if value == "earliest":
        return None
    if value == "now":
        return time.time_ns() // 1_000_000
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        msg = f"time must be ISO-8601, 'earliest' or 'now', got {text!r}"
        raise ConfigError(msg) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
