"""Which runs may share a zygote template (runtime/zygote.template_key): fast, no processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mfprefect.runtime.zygote import template_key


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "mfhome"
    home.mkdir(exist_ok=True)
    return {"USER": "me", "HOME": str(tmp_path), "METAFLOW_HOME": str(home), **extra}


def test_variables_not_read_at_import_do_not_matter(tmp_path: Path) -> None:
    env = _env(tmp_path, PATH="/bin", AWS_PROFILE="a")
    same = dict(env, PATH="/usr/bin", AWS_PROFILE="b", PREFECT_API_URL="http://x")
    assert template_key(env, str(tmp_path)) == template_key(same, str(tmp_path))


def test_import_time_variables_and_the_folder_make_another_template(tmp_path: Path) -> None:
    env = _env(tmp_path)
    key = template_key(env, str(tmp_path))
    assert template_key(dict(env, METAFLOW_DEFAULT_DATASTORE="s3"), str(tmp_path)) != key
    assert template_key(dict(env, PYTHONPATH="/x"), str(tmp_path)) != key
    assert template_key(dict(env, USER="you"), str(tmp_path)) != key
    assert template_key(env, str(tmp_path / "elsewhere")) != key


def test_an_edited_metaflow_config_makes_another_template(tmp_path: Path) -> None:
    env = _env(tmp_path)
    config = Path(env["METAFLOW_HOME"]) / "config.json"
    before = template_key(env, str(tmp_path))
    config.write_text('{"METAFLOW_DEFAULT_DATASTORE": "local"}')
    written = template_key(env, str(tmp_path))
    assert written != before
    config.write_text('{"METAFLOW_DEFAULT_DATASTORE": "s3"}')
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert template_key(env, str(tmp_path)) != written


def test_a_package_installed_on_the_path_makes_another_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    env = _env(tmp_path)
    before = template_key(env, str(tmp_path))
    (site / "metaflow_extensions").mkdir()  # what `pip install` of an extension does
    stat = site.stat()
    os.utime(site, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert template_key(env, str(tmp_path)) != before
