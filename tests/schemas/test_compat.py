from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.compat import backward_problems, check, check_directory
from schemas.registry import FileRegistry

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def _v1() -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / "user_event_v1.avsc").read_text())


def _write_dir(tmp_path: Path, schemas: list[dict[str, Any]]) -> Path:
    entries = []
    for version, schema in enumerate(schemas, start=1):
        name = f"s{version}.avsc"
        (tmp_path / name).write_text(json.dumps(schema))
        entries.append({"version": version, "id": version, "file": name})
    (tmp_path / "manifest.json").write_text(json.dumps({"subjects": {"user_events-value": entries}}))
    return tmp_path


def test_shipped_schemas_pass() -> None:
    assert check(FileRegistry()) == []
    assert check_directory() == []


def test_incompatible_schema_is_rejected(tmp_path: Path) -> None:
    bad = _v1()
    bad["fields"].append({"name": "region", "type": "string"})  # required, no default
    next(f for f in bad["fields"] if f["name"] == "user_id")["type"] = "int"  # string -> int
    problems = check_directory(_write_dir(tmp_path, [_v1(), bad]))
    assert any("region: new field has no default" in p for p in problems), problems
    assert any("user_id: type changed string -> int" in p for p in problems), problems
    assert all(p.startswith("user_events-value v2") for p in problems)


def test_unparsable_schema_is_a_problem(tmp_path: Path) -> None:
    bad = _v1()
    bad["fields"][0]["type"] = "no_such_type"
    problems = check_directory(_write_dir(tmp_path, [_v1(), bad]))
    assert len(problems) == 1 and "does not parse" in problems[0]


def test_promotions_and_defaults_are_allowed() -> None:
    writer = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "s", "type": "string"},
            {"name": "b", "type": "bytes"},
            {"name": "gone", "type": "int"},
        ],
    }
    reader = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "i", "type": "double"},
            {"name": "l", "type": "float"},
            {"name": "f", "type": "double"},
            {"name": "s", "type": "bytes"},
            {"name": "b", "type": "string"},
            {"name": "new", "type": ["null", "int"], "default": None},
        ],
    }
    assert backward_problems(reader, writer) == []
    assert backward_problems(writer, reader)  # not forward compatible


def test_unions() -> None:
    base = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}
    widened = {"type": "record", "name": "R", "fields": [{"name": "a", "type": ["null", "string"]}]}
    assert backward_problems(widened, base) == []
    assert backward_problems(base, widened) == ["a<branch 0>: type changed null -> string"]
    assert backward_problems(
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": ["null", "int"]}]}, base
    ) == ["a: no branch of the reader union reads string"]


def test_nested_records_maps_arrays() -> None:
    inner = {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}
    writer = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "xs", "type": {"type": "array", "items": inner}},
            {"name": "m", "type": {"type": "map", "values": "Inner"}},
        ],
    }
    reader = json.loads(json.dumps(writer))
    reader["fields"][0]["type"]["items"]["fields"][0]["type"] = "string"
    reader["fields"][0]["type"]["items"]["fields"].append({"name": "y", "type": "int"})
    problems = backward_problems(reader, writer)
    assert "xs[].x: type changed int -> string" in problems
    assert "xs[].y: new field has no default" in problems
    assert not any(p.startswith("m{}") for p in problems)  # a named pair is reported once
    maps = {
        "type": "record",
        "name": "M",
        "fields": [{"name": "m", "type": {"type": "map", "values": "int"}}],
    }
    wider = json.loads(json.dumps(maps))
    wider["fields"][0]["type"]["values"] = "long"
    assert backward_problems(wider, maps) == []
    assert backward_problems(maps, wider) == ["m{}: type changed long -> int"]


def test_enum_and_recursive_types() -> None:
    writer = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["A", "B"]}},
            {"name": "next", "type": ["null", "Node"], "default": None},
        ],
    }
    reader = json.loads(json.dumps(writer))
    reader["fields"][0]["type"]["symbols"] = ["A"]
    assert backward_problems(writer, writer) == []
    assert any("enum symbols removed" in p for p in backward_problems(reader, writer))
