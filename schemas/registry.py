"""Where writer schemas come from: the shipped files or a Confluent Schema Registry.

Every schema is parsed with ``fastavro.parse_schema`` exactly once, when it is
first loaded, and kept in a ``RegisteredSchema``. Decoding (``schemas.serde``)
only ever looks schemas up by the id in the Confluent frame, so a registry is
little more than ``id -> RegisteredSchema`` plus the subject/version history
that the compatibility check (``schemas.compat``) walks.
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fastavro import parse_schema
from fastavro.schema import SchemaParseException

from kappa.errors import SchemaError, ServiceUnavailable

SUBJECT = "user_events-value"
"""Default subject of the event value schema; independent of the topic name."""

SCHEMA_DIR = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
_JSON_MEDIA = "application/vnd.schemaregistry.v1+json"


class UnknownSchema(SchemaError):
    """A schema id (or subject) the registry does not hold."""


@dataclass(frozen=True, eq=False)
class RegisteredSchema:
    """One registered schema version, parsed once.

    Attributes:
        subject: Registry subject, e.g. ``user_events-value``.
        version: Version within the subject, starting at 1.
        id: Global schema id written in the Confluent frame.
        file: File the schema was loaded from (empty for a remote registry).
        raw: The schema as JSON data; never mutated.
        parsed: ``fastavro.parse_schema(raw)``; reads ``ts`` as an aware datetime.
        fast: Parsed variant with ``timestamp-millis`` stripped from top-level
            fields, so ``ts`` decodes to int epoch millis (no datetime cost).
            Writers and readers use this one on the hot path.
    """

    subject: str
    version: int
    id: int
    file: str
    raw: dict[str, Any]
    parsed: dict[str, Any]
    fast: dict[str, Any]

    @classmethod
    def build(
        cls, *, subject: str, version: int, schema_id: int, file: str, raw: dict[str, Any]
    ) -> RegisteredSchema:
        """Parse ``raw`` (both variants) and wrap it.

        Raises:
            SchemaError: The schema is not valid Avro.
        """
        where = file or f"{subject} v{version} (id {schema_id})"
        try:
            parsed = parse_schema(copy.deepcopy(raw))
            fast = parse_schema(strip_timestamp_millis(raw))
        except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
            msg = f"schema {where} does not parse: {exc}"
            raise SchemaError(msg) from exc
        if not isinstance(parsed, dict) or not isinstance(fast, dict) or parsed.get("type") != "record":
            msg = f"schema {where} must be an Avro record"
            raise SchemaError(msg)
        return cls(subject, version, schema_id, file, raw, parsed, fast)

    def info(self) -> dict[str, Any]:
        """The ``kappa schemas list`` row for this schema."""
        return {"subject": self.subject, "version": self.version, "id": self.id, "file": self.file}


def strip_timestamp_millis(raw: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a record schema whose top-level timestamp-millis fields are plain longs."""
    out = copy.deepcopy(raw)
    for field in out.get("fields", []):
        ftype = field.get("type")
        if isinstance(ftype, dict) and ftype.get("logicalType") == "timestamp-millis":
            field["type"] = ftype.get("type", "long")
    return out


class Registry(Protocol):
    """What the decoder and the compatibility check need from a registry."""

    def get(self, schema_id: int) -> RegisteredSchema:
        """The schema with this id; raises ``UnknownSchema`` if there is none."""
        ...

    def latest(self, subject: str = SUBJECT) -> RegisteredSchema:
        """The newest version of ``subject``."""
        ...

    def versions(self, subject: str = SUBJECT) -> list[RegisteredSchema]:
        """Every version of ``subject``, oldest first."""
        ...

    def subjects(self) -> list[str]:
        """All subjects, sorted."""
        ...

    def list(self) -> list[dict[str, Any]]:
        """``{subject, version, id, file}`` for every schema, by subject then version."""
        ...


class FileRegistry:
    """The schemas shipped in ``schemas/`` (or another directory with a ``manifest.json``).

    The manifest maps subjects to ``[{version, id, file}]``. Everything is loaded
    and parsed in the constructor, so a broken schema fails start-up, not the
    first record that uses it.
    """

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else SCHEMA_DIR
        self._by_id: dict[int, RegisteredSchema] = {}
        self._by_subject: dict[str, list[RegisteredSchema]] = {}
        manifest = self._read_json(self.directory / MANIFEST)
        subjects = manifest.get("subjects") if isinstance(manifest, dict) else None
        if not isinstance(subjects, dict):
            msg = f"{self.directory / MANIFEST}: expected {{'subjects': {{name: [...]}}}}"
            raise SchemaError(msg)
        for subject, entries in subjects.items():
            for entry in entries:
                self._add(subject, entry)
        for versions in self._by_subject.values():
            versions.sort(key=lambda s: s.version)

    def _read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except OSError as exc:
            msg = f"cannot read {path}: {exc.strerror or exc}"
            raise SchemaError(msg) from exc
        except ValueError as exc:
            msg = f"{path} is not valid JSON: {exc}"
            raise SchemaError(msg) from exc

    def _add(self, subject: str, entry: dict[str, Any]) -> None:
        try:
            version, schema_id, file = int(entry["version"]), int(entry["id"]), str(entry["file"])
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"manifest entry {entry!r} of {subject} needs version, id and file"
            raise SchemaError(msg) from exc
        if schema_id in self._by_id:
            msg = f"schema id {schema_id} is registered twice in the manifest"
            raise SchemaError(msg)
        versions = self._by_subject.setdefault(subject, [])
        if any(s.version == version for s in versions):
            msg = f"{subject} version {version} is registered twice in the manifest"
            raise SchemaError(msg)
        raw = self._read_json(self.directory / file)
        if not isinstance(raw, dict):
            msg = f"{file}: a schema must be a JSON object"
            raise SchemaError(msg)
        schema = RegisteredSchema.build(
            subject=subject, version=version, schema_id=schema_id, file=file, raw=raw
        )
        self._by_id[schema_id] = schema
        versions.append(schema)

    def get(self, schema_id: int) -> RegisteredSchema:
        """The schema with this id.

        Raises:
            UnknownSchema: No schema has this id.
        """
        try:
            return self._by_id[schema_id]
        except KeyError:
            msg = f"unknown schema id {schema_id}"
            raise UnknownSchema(msg) from None

    def latest(self, subject: str = SUBJECT) -> RegisteredSchema:
        """The newest version of ``subject``; raises ``UnknownSchema`` if it has none."""
        return self.versions(subject)[-1]

    def versions(self, subject: str = SUBJECT) -> list[RegisteredSchema]:
        """Every version of ``subject``, oldest first."""
        versions = self._by_subject.get(subject)
        if not versions:
            msg = f"unknown subject {subject!r}"
            raise UnknownSchema(msg)
        return list(versions)

    def subjects(self) -> list[str]:
        """All subjects in the manifest, sorted."""
        return sorted(self._by_subject)

    def list(self) -> list[dict[str, Any]]:
        """``{subject, version, id, file}`` for every schema, by subject then version."""
        return [s.info() for subject in self.subjects() for s in self._by_subject[subject]]


class ConfluentRegistry:
    """A Confluent Schema Registry over HTTP (stdlib ``urllib``, no extra dependency).

    Schemas are cached by id for the life of the object (ids are immutable in a
    registry), so the hot path never touches the network after the first
    record of each writer schema.
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._by_id: dict[int, RegisteredSchema] = {}

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Accept": _JSON_MEDIA, "Content-Type": _JSON_MEDIA},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:200]
            if exc.code == 404:
                msg = f"schema registry: not found: {method} {path}"
                raise UnknownSchema(msg) from exc
            if exc.code >= 500:
                msg = f"schema registry at {self.url} failed ({exc.code}): {detail}"
                raise ServiceUnavailable(msg) from exc
            msg = f"schema registry rejected {method} {path} ({exc.code}): {detail}"
            raise SchemaError(msg) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            msg = f"schema registry at {self.url} is unreachable: {reason}"
            raise ServiceUnavailable(msg) from exc
        except ValueError as exc:
            msg = f"schema registry at {self.url} sent a response that is not JSON"
            raise ServiceUnavailable(msg) from exc

    def _build(self, subject: str, version: int, schema_id: int, text: str) -> RegisteredSchema:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            msg = f"schema id {schema_id} from the registry is not JSON"
            raise SchemaError(msg) from exc
        schema = RegisteredSchema.build(
            subject=subject, version=version, schema_id=schema_id, file="", raw=raw
        )
        self._by_id.setdefault(schema_id, schema)
        return self._by_id[schema_id]

    @staticmethod
    def _quote(subject: str) -> str:
        return urllib.parse.quote(subject, safe="")

    def get(self, schema_id: int) -> RegisteredSchema:
        """The schema with this id, from the cache or ``GET /schemas/ids/{id}``.

        Raises:
            UnknownSchema: The registry has no such id.
            ServiceUnavailable: The registry cannot be reached.
        """
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            body = self._request("GET", f"/schemas/ids/{int(schema_id)}")
        except UnknownSchema:
            msg = f"unknown schema id {schema_id}"
            raise UnknownSchema(msg) from None
        subject, version = "", 0
        try:
            owners = self._request("GET", f"/schemas/ids/{int(schema_id)}/versions")
        except UnknownSchema:
            owners = []
        if owners:
            subject, version = str(owners[0]["subject"]), int(owners[0]["version"])
        return self._build(subject, version, schema_id, body["schema"])

    def _version(self, subject: str, version: str) -> RegisteredSchema:
        body = self._request("GET", f"/subjects/{self._quote(subject)}/versions/{version}")
        cached = self._by_id.get(int(body["id"]))
        if cached is not None and cached.subject == subject:
            return cached
        schema = RegisteredSchema.build(
            subject=subject,
            version=int(body["version"]),
            schema_id=int(body["id"]),
            file="",
            raw=json.loads(body["schema"]),
        )
        self._by_id[schema.id] = schema
        return schema

    def latest(self, subject: str = SUBJECT) -> RegisteredSchema:
        """``GET /subjects/{subject}/versions/latest`` (not cached: it can move)."""
        return self._version(subject, "latest")

    def versions(self, subject: str = SUBJECT) -> list[RegisteredSchema]:
        """Every version of ``subject``, oldest first."""
        numbers = self._request("GET", f"/subjects/{self._quote(subject)}/versions")
        return [self._version(subject, str(int(v))) for v in sorted(numbers)]

    def subjects(self) -> list[str]:
        """``GET /subjects``, sorted."""
        return sorted(str(s) for s in self._request("GET", "/subjects"))

    def list(self) -> list[dict[str, Any]]:
        """``{subject, version, id, file}`` for every schema, by subject then version."""
        return [s.info() for subject in self.subjects() for s in self.versions(subject)]

    def register(self, raw: dict[str, Any], subject: str = SUBJECT) -> int:
        """Register ``raw`` under ``subject`` (``POST /subjects/{subject}/versions``).

        Returns:
            The schema id the registry assigned (the existing id if already registered).

        Raises:
            SchemaError: The schema does not parse or the registry rejects it
                (e.g. 409: incompatible with the subject's compatibility level).
        """
        RegisteredSchema.build(subject=subject, version=0, schema_id=0, file="", raw=raw)
        body = self._request(
            "POST", f"/subjects/{self._quote(subject)}/versions", {"schema": json.dumps(raw)}
        )
        return int(body["id"])


def open_registry(schema_registry_url: str | None = None) -> Registry:
    """The Confluent registry at ``schema_registry_url``, or the shipped files when ``None``."""
    if schema_registry_url:
        return ConfluentRegistry(schema_registry_url)
    return FileRegistry()
