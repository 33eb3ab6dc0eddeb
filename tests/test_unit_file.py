"""The shipped unit: hardened (exposure ≤ 1.5), valid, and wired for notify/watchdog.

That the daemon really runs under every one of these settings is proven on a
real systemd by the system test; here we check the file itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[1] / "packaging" / "systemd" / "feishu-mailbot.service"
ANALYZE = shutil.which("systemd-analyze") or "systemd-analyze"  # make setup installs systemd


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_unit_contract() -> None:
    s = settings()
    assert s["Type"] == ["notify"]
    assert s["RestartPreventExitStatus"] == ["78"]
    assert s["Restart"] in (["always"], ["on-failure"])
    assert int(s["RestartSec"][0]) >= 3  # keeps the default start limit out of reach
    assert s["WatchdogSec"] and s["StateDirectory"] == ["feishu-mailbot"]
    assert s["User"] == ["feishu-mailbot"]
    assert any("check-config" in v for v in s["ExecReload"])
    assert any("kill -HUP $MAINPID" in v for v in s["ExecReload"])
    assert s["Documentation"]
    high, top = (int(s[key][0].removesuffix("M")) for key in ("MemoryHigh", "MemoryMax"))
    # Room for the steady ≈50 MB plus a forward's and a digest's files at the largest
    # attachment caps (2 × 50 MB), and a ceiling.
    assert 150 <= high < top <= 512


def test_exposure_is_at_most_1_5() -> None:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 1.5


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    """verify insists the ExecStart binary exists: point it at this checkout's console script."""
    script = Path(sys.executable).parent / "feishu-mailbot"
    unit = tmp_path / "feishu-mailbot.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/feishu-mailbot", str(script)))
    result = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
