"""`make demo`: what it installs and what it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.harness import REPO


def test_the_demo_prints_its_rules_its_mail_and_no_warning_of_its_own() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "- name: oncall" in text and "email 6 of 6" in text
    assert "oc_elsewhere (a chat not in `chats`) was acknowledged to Feishu and dropped" in text
    assert not re.search(r"warn", text, re.I), [x for x in text.splitlines() if "arn" in x]


def test_the_demo_installs_only_the_runtime_packages_readme_lists() -> None:
    makefile = (REPO / "Makefile").read_text("utf-8")
    assert re.search(r"^demo: setup-runtime$", makefile, re.M)
    listed = re.search(r"^RUNTIME_PACKAGES := ((?:.*\\\n)*.*)$", makefile, re.M)
    assert listed is not None
    packages = listed.group(1).replace("\\\n", " ").split()
    readme = (REPO / "README.md").read_text("utf-8")
    said = readme.split("`make demo` installs only the runtime's", 1)[1].split(":", 1)[0]
    assert sorted(re.findall(r"`([a-z0-9.-]+)`", said)) == sorted(packages)
