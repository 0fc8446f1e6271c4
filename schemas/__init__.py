"""Avro schemas of the event stream: registry, wire format and compatibility check.

The ``.avsc`` files and ``manifest.json`` in this package are the shipped
contract; ``schemas.registry`` loads them (or talks to a Confluent Schema
Registry), ``schemas.serde`` frames and decodes records, and
``schemas.compat`` checks that each subject's versions evolve backward
compatibly.
"""

from __future__ import annotations

from schemas.registry import (
    SUBJECT,
    ConfluentRegistry,
    FileRegistry,
    RegisteredSchema,
    Registry,
    UnknownSchema,
    open_registry,
)
from schemas.serde import DecodeError, Decoder, encode, frame, unframe

__all__ = [
    "SUBJECT",
    "ConfluentRegistry",
    "DecodeError",
    "Decoder",
    "FileRegistry",
    "RegisteredSchema",
    "Registry",
    "UnknownSchema",
    "encode",
    "frame",
    "open_registry",
    "unframe",
]
