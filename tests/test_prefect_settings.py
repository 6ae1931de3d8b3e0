"""What Prefect builds its settings from (runtime/prefect_settings.py): which changes count."""

from __future__ import annotations

from pathlib import Path

from mfprefect.runtime.prefect_settings import sources


def test_equal_folders_and_variables_give_equal_sources(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    env = {"HOME": str(tmp_path), "PREFECT_API_URL": "http://127.0.0.1:1/api", "OTHER": "x"}
    assert sources(str(one), env) == sources(str(two), dict(env, OTHER="y"))


def test_a_pyproject_counts_only_for_its_prefect_table(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    before = sources(str(tmp_path), env)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert sources(str(tmp_path), env) == before
    (tmp_path / "pyproject.toml").write_text('[tool.prefect]\nlogging.level = "DEBUG"\n')
    assert sources(str(tmp_path), env) != before
    (tmp_path / "pyproject.toml").write_text("not toml [")
    assert sources(str(tmp_path), env) != before


def test_settings_files_variables_and_the_profiles_file_count(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    before = sources(str(tmp_path), env)
    assert sources(str(tmp_path), dict(env, prefect_logging_level="DEBUG")) != before
    assert sources(str(tmp_path), dict(env, PREFECT_HOME=str(tmp_path / "h"))) != before
    for name in (".env", "prefect.toml"):
        (tmp_path / name).write_text("# nothing yet\n")
        assert sources(str(tmp_path), env) != before, name
        (tmp_path / name).unlink()
    assert sources(str(tmp_path), env) == before
    profiles = tmp_path / ".prefect" / "profiles.toml"
    profiles.parent.mkdir()
    profiles.write_text('active = "default"\n')
    changed = sources(str(tmp_path), env)
    assert changed != before
    profiles.write_text('active = "other"\n')
    assert sources(str(tmp_path), env) != changed
