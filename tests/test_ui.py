"""The local server serves Prefect's UI and the links a run prints open its flow run, checked in a
real browser: headless Chromium (Debian's package), which renders the page and saves a screenshot
(kept under test-artifacts/)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT, flow_env, mfprefect, prefect_api, run

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "test-artifacts"
STEPS = ["start", "a1", "a2", "b1", "b2", "join", "end"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def _browser(chromium: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium, with its profile in `home`; `--virtual-time-budget` lets the page's
    scripts and API calls finish before the DOM is dumped or the screenshot taken."""
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={home / 'chromium-profile'}",
            "--virtual-time-budget=20000",
            "--window-size=1400,1000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, HOME=str(home)),
    )


def test_a_local_runs_link_opens_its_completed_flow_run_in_the_ui(tmp_path: Path) -> None:
    chromium = _chromium()
    env = flow_env(tmp_path)
    env["MFPREFECT_HOME"] = str(tmp_path / "mfprefect-home")
    env.pop("PREFECT_API_URL", None)
    for name in ("split_join_flow.py", "split_join_flow.yaml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    try:
        done = mfprefect("run", "split_join_flow.yaml", env=env, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        status = mfprefect("server", "status", env=env)
        assert status.returncode == 0, status.stderr
        api = re.search(r'"url": "([^"]+)"', status.stdout).group(1)  # type: ignore[union-attr]
        ui = api.removesuffix("/api")
        assert f'"ui": "{ui}"' in status.stdout
        printed = mfprefect("server", "ui", "--no-browser", env=env)
        assert printed.returncode == 0 and printed.stdout.strip() == ui

        # Every link the run printed names this server's UI and the one flow run.
        links = set(re.findall(r"View at (\S+)", done.stdout + done.stderr))
        assert len(links) == 1, links
        (link,) = links
        assert link.startswith(f"{ui}/runs/flow-run/")
        flow_run_id = link.rsplit("/", 1)[1]
        task_runs = prefect_api(
            api, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}}
        )
        names = sorted(t["name"] for t in task_runs)  # type: ignore[union-attr]
        assert [n for n in names if n != "_parameters"] == sorted(STEPS)
        assert all(t["state_type"] == "COMPLETED" for t in task_runs)  # type: ignore[union-attr]

        # The page itself, rendered by the browser from the UI the server serves.
        dom = _browser(chromium, tmp_path, "--dump-dom", link)
        assert dom.returncode == 0, dom.stderr[-2000:]
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))
        assert "Can't connect to Server API" not in text
        assert "SplitJoinFlow" in text and "Completed" in text
        assert f"{len(names)} Task runs" in text, text[:2000]
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "flow-run-split_join_flow.png"
        shot.unlink(missing_ok=True)
        taken = _browser(chromium, tmp_path, f"--screenshot={shot}", link)
        assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    finally:
        run([sys.executable, "-m", "mfprefect.cli", "server", "stop"], env=env, timeout=60)
