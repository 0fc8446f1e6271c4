"""Confluent wire format: ``0x00`` + 4-byte big-endian schema id + Avro binary body.

Decoding is on the dataflow's hot path, so it is built to do as little per
record as possible:

* schemas are parsed once (``RegisteredSchema.fast``: ``ts`` stays int millis,
  no datetime objects are made);
* the writer->reader resolution for each writer id is worked out once and
  cached. The common evolution (fields added with defaults, or removed, at the
  top level) reads with the writer schema alone and patches the dict, which is
  about twice as fast as fastavro's general resolving reader; anything else
  falls back to ``schemaless_reader(writer, reader)``.

Failures never escape as library exceptions: ``decode`` raises ``DecodeError``
with a reason code the validator routes to quarantine.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from kappa.errors import KappaError, SchemaError
from schemas.registry import SUBJECT, RegisteredSchema, Registry, UnknownSchema

MAGIC = 0
HEADER_BYTES = 5
UNDECODABLE = "undecodable"
UNKNOWN_SCHEMA = "unknown_schema"
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "string", "bytes"})


class DecodeError(KappaError):
    """A record that cannot be turned into a reader-schema dict.

    Attributes:
        reason: ``"undecodable"`` or ``"unknown_schema"`` (pipeline reason codes).
        detail: One human-readable line.
        schema_id: The id in the frame, when the frame could be read.
    """

    def __init__(self, reason: str, detail: str, schema_id: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.schema_id = schema_id


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header for ``schema_id``."""
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def unframe(value: bytes | None) -> tuple[int, bytes]:
    """Split a framed value into ``(schema_id, body)``.

    Raises:
        DecodeError: ``undecodable`` when the value is missing, shorter than the
            header, or does not start with the magic byte.
    """
    if value is None or len(value) < HEADER_BYTES:
        n = 0 if value is None else len(value)
        msg = f"{n} bytes is shorter than the 5-byte Confluent header"
        raise DecodeError(UNDECODABLE, msg)
    if value[0] != MAGIC:
        msg = f"magic byte is 0x{value[0]:02x}, expected 0x00"
        raise DecodeError(UNDECODABLE, msg)
    return int.from_bytes(value[1:HEADER_BYTES], "big"), value[HEADER_BYTES:]


def encode(record: dict[str, Any], schema: RegisteredSchema) -> bytes:
    """Frame and Avro-encode ``record`` with ``schema`` (``ts`` as int epoch millis).

    Raises:
        SchemaError: The record does not fit the schema.
    """
    out = BytesIO()
    out.write(b"\x00" + schema.id.to_bytes(4, "big"))
    try:
        schemaless_writer(out, schema.fast, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        msg = f"record does not fit schema id {schema.id}: {exc}"
        raise SchemaError(msg) from exc
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to read one writer schema as the reader schema (built once per writer id)."""

    writer: dict[str, Any]
    resolver: dict[str, Any] | None
    """Reader schema for fastavro's resolving read, or None to read as the writer."""
    drop: tuple[str, ...] = ()
    defaults: tuple[tuple[str, Any, bool], ...] = ()
    """(field, default, is_mutable) for reader fields the writer lacks."""


def _strip_docs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_docs(v) for k, v in node.items() if k != "doc"}
    if isinstance(node, list):
        return [_strip_docs(v) for v in node]
    return node


def _only_anonymous(node: Any) -> bool:
    """True when a type uses no named types (records, enums, fixed, references)."""
    if isinstance(node, str):
        return node in _PRIMITIVES
    if isinstance(node, list):
        return all(_only_anonymous(v) for v in node)
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "array":
            return _only_anonymous(node.get("items"))
        if kind == "map":
            return _only_anonymous(node.get("values"))
        return isinstance(kind, str) and kind in _PRIMITIVES
    return False


def _simple_default(ftype: Any, default: Any) -> bool:
    """True when an Avro JSON default is already the Python value fastavro would return."""
    first = ftype[0] if isinstance(ftype, list) and ftype else ftype
    kind = first.get("type") if isinstance(first, dict) else first
    if kind in ("float", "double"):
        return isinstance(default, float)
    if kind in ("map", "array"):
        return default in ({}, [])
    return kind != "bytes" and _only_anonymous(first)


_Patch = tuple[tuple[str, ...], tuple[tuple[str, Any, bool], ...]]


def _field_patch(writer: dict[str, Any], reader: dict[str, Any]) -> _Patch | None:
    """``(drop, defaults)`` turning a writer-schema dict into a reader one, or None.

    Only for top-level field additions/removals with plain, unnamed types; any
    other difference returns None and fastavro resolves it.
    """
    if (writer.get("name"), writer.get("namespace")) != (
        reader.get("name"),
        reader.get("namespace"),
    ):
        return None
    w_fields = {f["name"]: f for f in writer["fields"]}
    defaults: list[tuple[str, Any, bool]] = []
    for rf in reader["fields"]:
        name = rf["name"]
        if rf.get("aliases") or not _only_anonymous(rf["type"]):
            return None
        wf = w_fields.get(name)
        if wf is None:
            if "default" not in rf or not _simple_default(rf["type"], rf["default"]):
                return None
            value = rf["default"]
            defaults.append((name, value, isinstance(value, dict | list)))
        elif _strip_docs(wf["type"]) != _strip_docs(rf["type"]):
            return None
    r_names = {f["name"] for f in reader["fields"]}
    return tuple(n for n in w_fields if n not in r_names), tuple(defaults)


class Decoder:
    """Decode framed records written with any registered schema into one reader schema.

    Thread-compatible, not thread-safe (plans are cached without a lock); make
    one per worker. The result dict may be mutated freely by the caller.
    """

    def __init__(self, registry: Registry, reader: RegisteredSchema | None = None) -> None:
        """Bind a registry and the reader schema (default: latest of ``SUBJECT``)."""
        self.registry = registry
        self.reader = reader if reader is not None else registry.latest(SUBJECT)
        self._plans: dict[int, _Plan] = {}

    def _plan(self, schema_id: int) -> _Plan:
        try:
            writer = self.registry.get(schema_id)
        except UnknownSchema:
            msg = f"schema id {schema_id} is not in the registry"
            raise DecodeError(UNKNOWN_SCHEMA, msg, schema_id) from None
        if writer.id == self.reader.id:
            plan = _Plan(writer=writer.fast, resolver=None)
        else:
            patch = _field_patch(writer.raw, self.reader.raw)
            if patch is not None:
                plan = _Plan(writer.fast, None, *patch)
            else:
                plan = _Plan(writer=writer.fast, resolver=self.reader.fast)
        self._plans[schema_id] = plan
        return plan

    def decode(self, value: bytes) -> tuple[dict[str, Any], int]:
        """Decode one Kafka value.

        Returns:
            ``(record, writer_schema_id)``; the record has the reader schema's
            fields, ``ts`` as int epoch millis.

        Raises:
            DecodeError: ``undecodable`` (no/short frame, bad magic byte, a body
                that does not decode, trailing bytes) or ``unknown_schema``.
        """
        if value is None or len(value) < HEADER_BYTES or value[0] != MAGIC:
            unframe(value)  # raises the precise undecodable error
        schema_id = int.from_bytes(value[1:HEADER_BYTES], "big")
        plan = self._plans.get(schema_id)
        if plan is None:
            plan = self._plan(schema_id)
        fo = BytesIO(value)
        fo.seek(HEADER_BYTES)
        try:
            record = schemaless_reader(fo, plan.writer, plan.resolver)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on garbage
            detail = f"body does not decode with schema id {schema_id}: {type(exc).__name__}"
            raise DecodeError(UNDECODABLE, detail, schema_id) from None
        if fo.tell() != len(value):
            detail = f"{len(value) - fo.tell()} trailing bytes after the record"
            raise DecodeError(UNDECODABLE, detail, schema_id)
        if not isinstance(record, dict):
            detail = f"schema id {schema_id} does not decode to a record"
            raise DecodeError(UNDECODABLE, detail, schema_id)
        for name in plan.drop:
            del record[name]
        for name, default, mutable in plan.defaults:
            record[name] = copy.deepcopy(default) if mutable else default
        return record, schema_id
