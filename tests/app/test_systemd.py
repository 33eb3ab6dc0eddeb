"""The shipped unit: hardened (exposure ≤ 1.5), valid, and wired for notify/watchdog.

That the daemon really runs under every one of these settings is proven on a
real systemd by the system test; here we check the file itself.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "feishu-mailbot.service"
METRICS_UNIT = UNIT.with_name("feishu-mailbot-metrics.service")
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


def test_the_metrics_file_cannot_be_moved_elsewhere_by_a_planted_link(tmp_path: Path) -> None:
    """The root-privileged steps that put the metrics into node-exporter's directory,
    run as written in the unit, with that directory and the runtime one moved here.

    Whoever can write that directory (its owner is not us) could plant links: one
    at the final name pointing to a directory made `mv` move the file into it.
    """
    textfile, runtime, elsewhere = tmp_path / "textfile", tmp_path / "run", tmp_path / "else"
    for d in (textfile, runtime, elsewhere):
        d.mkdir()
    victim = elsewhere / "victim"
    victim.write_text("untouched\n")
    (runtime / "feishu-mailbot.prom").write_text("feishu_mailbot_up 1\n")
    (textfile / "feishu-mailbot.prom").symlink_to(elsewhere, target_is_directory=True)
    (textfile / "feishu-mailbot.prom.tmp").symlink_to(victim)
    steps = [
        line.split("=", 1)[1].lstrip("+")
        .replace("/var/lib/prometheus/node-exporter", str(textfile))
        .replace("/run/feishu-mailbot-metrics", str(runtime))
        for line in METRICS_UNIT.read_text().splitlines()
        if line.startswith("ExecStartPost=")
    ]  # fmt: skip
    assert len(steps) == 2
    for step in steps:
        subprocess.run(shlex.split(step), check=True, capture_output=True, timeout=30)
    final = textfile / "feishu-mailbot.prom"
    assert not final.is_symlink() and final.read_text() == "feishu_mailbot_up 1\n"
    assert final.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in elsewhere.iterdir()) == ["victim"]
    assert victim.read_text() == "untouched\n"
    assert sorted(p.name for p in textfile.iterdir()) == ["feishu-mailbot.prom"]
