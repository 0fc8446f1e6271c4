"""Backward-compatibility check of each subject's schema history (``kappa schemas check``).

BACKWARD means a consumer with the new (reader) schema can read data written
with the previous (writer) schema: the rule that lets producers move to a newer
schema mid-stream while the flow reads everything with the latest one.

fastavro has no compatibility checker (it only fails at read time), so this is
a small rule-based one following the Avro specification's schema resolution:
fields the reader adds need defaults, fields it drops are ignored, types may
change only by Avro promotion (int->long/float/double, long->float/double,
float->double, string<->bytes), unions must cover every writer branch, and
records, maps and arrays are checked recursively. Logical types do not affect
resolution and are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kappa.errors import SchemaError
from schemas.registry import FileRegistry, Registry

_PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
_NAMED = ("record", "error", "enum", "fixed")
_Names = dict[str, dict[str, Any]]


def _fullname(node: dict[str, Any], namespace: str | None) -> str:
    name = str(node.get("name", ""))
    if "." in name:
        return name
    space = node.get("namespace", namespace)
    return f"{space}.{name}" if space else name


def _collect(node: Any, namespace: str | None, names: _Names) -> None:
    """Index every named type in ``node`` by full name (so references resolve)."""
    if isinstance(node, list):
        for branch in node:
            _collect(branch, namespace, names)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in _NAMED:
            full = _fullname(node, namespace)
            names[full] = node
            if "." in node.get("name", ""):
                namespace = full.rsplit(".", 1)[0]
            else:
                namespace = node.get("namespace", namespace)
            for field in node.get("fields", []):
                _collect(field.get("type"), namespace, names)
        elif kind in ("array", "map"):
            _collect(node.get("items" if kind == "array" else "values"), namespace, names)
        elif isinstance(kind, dict | list):
            _collect(kind, namespace, names)


def _deref(node: Any, names: _Names) -> Any:
    """Resolve name references and ``{"type": <primitive>}`` wrappers to one canonical node."""
    while True:
        if isinstance(node, str):
            if node in names:
                return names[node]
            short = [v for k, v in names.items() if k.rsplit(".", 1)[-1] == node]
            return short[0] if len(short) == 1 else node
        if isinstance(node, dict) and isinstance(node.get("type"), str | list | dict):
            kind = node["type"]
            if kind in ("record", "error", "enum", "fixed", "array", "map"):
                return node
            node = kind
            continue
        return node


def _kind(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, dict):
        return str(node.get("type"))
    return str(node)


class _Checker:
    """One reader/writer pair; ``problems`` collects every incompatibility with its path."""

    def __init__(self, reader: dict[str, Any], writer: dict[str, Any]) -> None:
        self.r_names: _Names = {}
        self.w_names: _Names = {}
        _collect(reader, None, self.r_names)
        _collect(writer, None, self.w_names)
        self.problems: list[str] = []
        self._seen: set[tuple[int, int]] = set()

    def readable(self, reader: Any, writer: Any) -> bool:
        """Whether ``reader`` can read ``writer`` data, without recording problems."""
        probe = _Checker.__new__(_Checker)
        probe.r_names, probe.w_names = self.r_names, self.w_names
        probe.problems, probe._seen = [], set(self._seen)
        probe.check(reader, writer, "")
        return not probe.problems

    def check(self, reader: Any, writer: Any, path: str) -> None:
        reader, writer = _deref(reader, self.r_names), _deref(writer, self.w_names)
        r_kind, w_kind = _kind(reader), _kind(writer)
        if w_kind == "union":
            for i, branch in enumerate(writer):
                self.check(reader, branch, f"{path}<branch {i}>")
            return
        if r_kind == "union":
            if not any(self.readable(branch, writer) for branch in reader):
                self.problems.append(f"{path or '<root>'}: no branch of the reader union reads {w_kind}")
            return
        if r_kind != w_kind:
            if r_kind not in _PROMOTIONS.get(w_kind, frozenset()):
                self.problems.append(f"{path or '<root>'}: type changed {w_kind} -> {r_kind}")
            return
        if r_kind in ("record", "error"):
            self._record(reader, writer, path)
        elif r_kind == "array":
            self.check(reader.get("items"), writer.get("items"), f"{path}[]")
        elif r_kind == "map":
            self.check(reader.get("values"), writer.get("values"), f"{path}{{}}")
        elif r_kind == "enum":
            missing = set(writer.get("symbols", [])) - set(reader.get("symbols", []))
            if missing and "default" not in reader:
                self.problems.append(f"{path}: enum symbols removed without default: {sorted(missing)}")
        elif r_kind == "fixed" and reader.get("size") != writer.get("size"):
            self.problems.append(f"{path}: fixed size changed {writer.get('size')} -> {reader.get('size')}")

    def _record(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> None:
        pair = (id(reader), id(writer))
        if pair in self._seen:  # recursive type: this pair is already being checked
            return
        self._seen.add(pair)
        r_name, w_name = reader.get("name", ""), writer.get("name", "")
        short = str(r_name).rsplit(".", 1)[-1], str(w_name).rsplit(".", 1)[-1]
        if short[0] != short[1] and w_name not in reader.get("aliases", []):
            self.problems.append(f"{path or '<root>'}: record name changed {w_name} -> {r_name}")
        w_fields = {f["name"]: f for f in writer.get("fields", [])}
        for field in reader.get("fields", []):
            name = field["name"]
            where = f"{path}.{name}" if path else name
            match = w_fields.get(name) or next(
                (w_fields[a] for a in field.get("aliases", []) if a in w_fields), None
            )
            if match is not None:
                self.check(field["type"], match["type"], where)
            elif "default" not in field:
                self.problems.append(f"{where}: new field has no default")


def backward_problems(reader: dict[str, Any], writer: dict[str, Any]) -> list[str]:
    """Why ``reader`` cannot read data written with ``writer`` (empty when it can)."""
    checker = _Checker(reader, writer)
    checker.check(reader, writer, "")
    return checker.problems


def check(registry: Registry) -> list[str]:
    """Every problem in the registry's schema history; an empty list means all is well.

    Each subject's consecutive versions must be BACKWARD compatible. Schemas
    that do not parse cannot be in a registry (loading fails), so use
    ``check_directory`` to report those as problems too.
    """
    problems: list[str] = []
    for subject in registry.subjects():
        versions = registry.versions(subject)
        for old, new in zip(versions, versions[1:], strict=False):
            label = f"{subject} v{new.version} ({new.file or new.id}) cannot read v{old.version}"
            problems.extend(f"{label}: {p}" for p in backward_problems(new.raw, old.raw))
    return problems


def check_directory(directory: Path | str | None = None) -> list[str]:
    """``check`` over a schema directory, reporting load and parse failures as problems."""
    try:
        registry = FileRegistry(directory)
    except SchemaError as exc:
        return [str(exc)]
    return check(registry)
