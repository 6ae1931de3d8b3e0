"""Which server a local run uses: the environment's, the Prefect profile's, or mfprefect's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfprefect.runtime.local import profile_api_url


def test_profile_api_url_reads_the_active_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "profiles.toml").write_text(
        'active = "work"\n\n[profiles.default]\n\n[profiles.work]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
    )
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    assert profile_api_url() == "http://127.0.0.1:4200/api"
    monkeypatch.setenv("PREFECT_PROFILE", "default")
    assert profile_api_url() is None


def test_no_profile_file_means_no_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "missing"))
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    assert profile_api_url() is None
    (tmp_path / "bad.toml").write_text("not [valid")
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "bad.toml"))
    assert profile_api_url() is None
