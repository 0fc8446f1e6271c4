"""The CLI contract: JSON on stdout, one-line errors, non-zero exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kappa.procs import free_port


def kappa(*args: str, env: dict[str, str] | None = None, home: Path | None = None
          ) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update(env or {})
    if home is not None:
        full["KAPPA_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "kappa.cli", *args], capture_output=True,
                          text=True, env=full, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kappa: error:")
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("args", [
    ["produce"],
    ["produce", "--events", "-5"],
    ["produce", "--events", "10", "--bad-rate", "2"],
    ["produce", "--events", "ten"],
    ["nonsense"],
    ["features", "get"],
])
def test_bad_arguments_exit_2_with_one_line(args: list[str], tmp_path: Path) -> None:
    proc = kappa(*args, home=tmp_path)
    assert proc.returncode == 2
    one_line_error(proc)


def test_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    proc = kappa("run", "--bounded", home=tmp_path,
                 env={"KAPPA_BOOTSTRAP_SERVERS": dead, "KAPPA_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode == 1
    assert dead in one_line_error(proc)


def test_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    proc = kappa("features", "get", "user_activity_1m", "u1", home=tmp_path,
                 env={"KAPPA_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert proc.returncode == 1
    one_line_error(proc)


def test_no_stack_tells_the_user_what_to_do(tmp_path: Path) -> None:
    env = {k: "" for k in ("KAPPA_BOOTSTRAP_SERVERS", "KAPPA_REDIS_URL")}
    proc = kappa("run", "--bounded", home=tmp_path, env=env)
    assert proc.returncode == 1
    assert "kappa up" in one_line_error(proc)


def test_unknown_view_is_one_line(tmp_path: Path, redis_url: str) -> None:
    proc = kappa("features", "get", "nope", "u1", home=tmp_path, env={"KAPPA_REDIS_URL": redis_url})
    assert proc.returncode == 1
    assert "unknown view" in one_line_error(proc)


def test_features_get_missing_entity_is_a_status(tmp_path: Path, redis_url: str) -> None:
    proc = kappa("features", "get", "user_session", "nobody", home=tmp_path,
                 env={"KAPPA_REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["status"] == "missing"


def test_schemas_list_and_check(tmp_path: Path) -> None:
    listed = kappa("schemas", "list", home=tmp_path)
    assert listed.returncode == 0
    assert [(s["subject"], s["version"], s["id"]) for s in json.loads(listed.stdout)] == [
        ("user_events-value", 1, 1), ("user_events-value", 2, 2)]
    checked = kappa("schemas", "check", home=tmp_path)
    assert checked.returncode == 0 and json.loads(checked.stdout)["ok"] is True


def test_schemas_check_rejects_incompatible(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "schemas"
    (tmp_path / "user_event_v1.avsc").write_text((shipped / "user_event_v1.avsc").read_text())
    v2 = json.loads((shipped / "user_event_v2.avsc").read_text())
    v2["fields"].append({"name": "tier", "type": "int"})  # new field without a default
    (tmp_path / "user_event_v2.avsc").write_text(json.dumps(v2))
    (tmp_path / "manifest.json").write_text((shipped / "manifest.json").read_text())
    proc = kappa("schemas", "check", "--dir", str(tmp_path), home=tmp_path)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["ok"] is False


def test_every_subcommand_has_help(tmp_path: Path) -> None:
    for args in (["up"], ["down"], ["status"], ["produce"], ["run"], ["features", "get"],
                 ["schemas", "list"], ["schemas", "check"], ["demo"]):
        proc = kappa(*args, "--help", home=tmp_path)
        assert proc.returncode == 0 and "usage:" in proc.stdout, args
