"""``Settings.from_env``: unset variables give the field defaults, set ones are checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kappa.errors import ConfigError
from kappa.settings import Settings


def test_unset_variables_take_the_field_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({"KAPPA_HOME": str(tmp_path)})
    derived = {"home", "catalog_uri", "warehouse", "recovery_dir"}  # from KAPPA_HOME
    checked = 0
    for f in dataclasses.fields(Settings):
        if f.name in derived or f.default is dataclasses.MISSING:
            continue
        assert getattr(settings, f.name) == f.default, f.name
        checked += 1
    assert checked >= 30


def test_a_set_variable_overrides_its_default(tmp_path: Path) -> None:
    settings = Settings.from_env({"KAPPA_HOME": str(tmp_path), "KAPPA_FLUSH_INTERVAL_S": "0.1",
                                  "KAPPA_FILE_BYTES": "4096"})
    assert settings.flush_interval_s == 0.1
    assert settings.file_bytes == 4096


@pytest.mark.parametrize(("name", "value", "message"), [
    ("KAPPA_FLUSH_INTERVAL_S", "0.01", "KAPPA_FLUSH_INTERVAL_S must be >= 0.05"),
    ("KAPPA_SHARDS", "four", "KAPPA_SHARDS must be an integer"),
    ("KAPPA_RECOVERY", "maybe", "KAPPA_RECOVERY must be a boolean"),
])
def test_a_bad_value_is_one_clear_error(tmp_path: Path, name: str, value: str,
                                        message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"KAPPA_HOME": str(tmp_path), name: value})
