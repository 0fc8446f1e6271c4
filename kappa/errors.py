"""One exception tree, so the CLI can turn any failure into one clear line."""

from __future__ import annotations


class KappaError(Exception):
    """Root of every error this product raises on purpose."""


class ConfigError(KappaError):
    """A setting or argument is invalid; fix the input and run again."""


class TerminalError(KappaError):
    """A failure that retrying will not fix (missing binary, bad table schema)."""


class TransientError(KappaError):
    """A failure that may pass (service down, commit conflict).

    Attributes:
        retry_after: Suggested seconds to wait before retrying.
    """

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(TransientError):
    """A broker, Redis or catalog could not be reached."""


class SchemaError(KappaError):
    """A schema is unknown, unparsable or incompatible with its predecessor."""
