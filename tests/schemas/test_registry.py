from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kappa.errors import SchemaError, ServiceUnavailable
from kappa.procs import free_port
from schemas.registry import (
    SUBJECT,
    ConfluentRegistry,
    FileRegistry,
    UnknownSchema,
    open_registry,
)
from schemas.serde import Decoder, encode

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def test_file_registry_lists_shipped_schemas() -> None:
    registry = FileRegistry()
    assert registry.list() == [
        {"subject": SUBJECT, "version": 1, "id": 1, "file": "user_event_v1.avsc"},
        {"subject": SUBJECT, "version": 2, "id": 2, "file": "user_event_v2.avsc"},
    ]
    assert registry.latest().version == 2
    assert [s.id for s in registry.versions(SUBJECT)] == [1, 2]
    assert registry.subjects() == [SUBJECT]
    assert isinstance(open_registry(None), FileRegistry)


def test_parsed_once_and_fast_variant_strips_logical_type() -> None:
    schema = FileRegistry().get(1)
    assert schema.parsed is schema.parsed
    ts_fast = next(f for f in schema.fast["fields"] if f["name"] == "ts")
    ts_parsed = next(f for f in schema.parsed["fields"] if f["name"] == "ts")
    assert ts_fast["type"] == "long"
    assert ts_parsed["type"]["logicalType"] == "timestamp-millis"
    assert schema.raw["fields"][6]["type"]["logicalType"] == "timestamp-millis"  # raw untouched


def test_unknown_id_and_subject() -> None:
    registry = FileRegistry()
    with pytest.raises(UnknownSchema):
        registry.get(999)
    with pytest.raises(UnknownSchema):
        registry.latest("nope-value")
    assert issubclass(UnknownSchema, SchemaError)


def test_broken_directory_is_a_schema_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="manifest.json"):
        FileRegistry(tmp_path)
    (tmp_path / "manifest.json").write_text(
        json.dumps({"subjects": {"s": [{"version": 1, "id": 1, "file": "x.avsc"}]}})
    )
    (tmp_path / "x.avsc").write_text(
        '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}'
    )
    with pytest.raises(SchemaError, match="does not parse"):
        FileRegistry(tmp_path)


class _FakeConfluent(BaseHTTPRequestHandler):
    """The handful of Confluent Schema Registry endpoints the adapter uses."""

    subjects: dict[str, list[int]] = {}
    schemas: dict[int, str] = {}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _version_body(self, subject: str, version: int) -> dict[str, Any]:
        schema_id = self.subjects[subject][version - 1]
        return {
            "subject": subject,
            "version": version,
            "id": schema_id,
            "schema": self.schemas[schema_id],
        }

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts[:2] == ["schemas", "ids"] and int(parts[2]) in self.schemas:
            schema_id = int(parts[2])
            if len(parts) == 4:
                owners = [
                    {"subject": s, "version": i + 1}
                    for s, ids in self.subjects.items()
                    for i, x in enumerate(ids)
                    if x == schema_id
                ]
                return self._send(200, owners)
            return self._send(200, {"schema": self.schemas[schema_id]})
        if parts == ["subjects"]:
            return self._send(200, sorted(self.subjects))
        if parts[0] == "subjects" and parts[1] in self.subjects and parts[2] == "versions":
            subject = parts[1]
            if len(parts) == 3:
                return self._send(200, list(range(1, len(self.subjects[subject]) + 1)))
            version = len(self.subjects[subject]) if parts[3] == "latest" else int(parts[3])
            return self._send(200, self._version_body(subject, version))
        return self._send(404, {"error_code": 40403, "message": "Schema not found"})

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        wanted = json.loads(body["schema"])
        schema_id = next((i for i, t in self.schemas.items() if json.loads(t) == wanted), 0)
        if not schema_id:
            schema_id = max(self.schemas, default=0) + 1
            self.schemas[schema_id] = body["schema"]
        ids = self.subjects.setdefault(parts[1], [])
        if schema_id not in ids:
            ids.append(schema_id)
        self._send(200, {"id": schema_id})


@pytest.fixture
def confluent() -> Iterator[str]:
    _FakeConfluent.subjects, _FakeConfluent.schemas = {}, {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeConfluent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_confluent_registry_roundtrip(confluent: str) -> None:
    registry = open_registry(confluent)
    assert isinstance(registry, ConfluentRegistry)
    raws = [json.loads((SCHEMA_DIR / f"user_event_v{v}.avsc").read_text()) for v in (1, 2)]
    ids = [registry.register(raw) for raw in raws]
    assert ids == [1, 2]
    assert registry.register(raws[0]) == 1  # idempotent
    assert registry.latest().version == 2
    assert registry.list() == [
        {"subject": SUBJECT, "version": 1, "id": 1, "file": ""},
        {"subject": SUBJECT, "version": 2, "id": 2, "file": ""},
    ]
    fresh = ConfluentRegistry(confluent)
    schema = fresh.get(1)
    assert (schema.subject, schema.version, schema.raw) == (SUBJECT, 1, raws[0])
    assert fresh.get(1) is schema  # cached by id
    with pytest.raises(UnknownSchema):
        fresh.get(999)
    event = {
        "event_id": "e",
        "user_id": "u",
        "event_type": "page_view",
        "item_id": "i",
        "amount": None,
        "currency": None,
        "ts": 1,
        "session_id": "s",
        "attributes": {},
    }
    record, schema_id = Decoder(fresh).decode(encode(event, schema))
    assert (schema_id, record["channel"]) == (1, "web")


def test_confluent_unreachable_is_one_clear_line() -> None:
    registry = ConfluentRegistry(f"http://127.0.0.1:{free_port()}", timeout=2.0)
    with pytest.raises(ServiceUnavailable, match="unreachable") as info:
        registry.get(1)
    assert "\n" not in str(info.value)
