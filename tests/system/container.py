"""A Debian bookworm tree booted with systemd-nspawn: a real systemd for the system test.

This machine's PID 1 is not systemd, but a debootstrap'd tree boots under
`systemd-nspawn -b --register=no --keep-unit` and is driven from outside with
`nsenter -t <its systemd> -a …` (DESIGN §4). It shares the host's network, so
the emulators on 127.0.0.1 are reachable from the service inside.

The tree is built once per package list and cached under /var/cache; each test
session boots a fresh copy of it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

CACHE = Path("/var/cache/feishu-mailbot-tests")
SUITE = "bookworm"
# The .deb's Depends come from here, so `apt install ./x.deb` needs no network.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-systemd",
    "python3-sdnotify",
    "python3-yaml",
    "python3-regex",
    "adduser",
    "procps",
)
ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "DEBIAN_FRONTEND": "noninteractive",
}


def _mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        found = re.search(r"^URIs:\s*(\S+/debian)\s*$", sources.read_text(), re.M)
        if found:
            return found.group(1)
    return "http://deb.debian.org/debian"


def ensure_host_tools() -> None:
    missing = [t for t in ("debootstrap", "systemd-nspawn", "nsenter") if not shutil.which(t)]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            [
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "debootstrap",
                "systemd-container",
                "util-linux",
            ],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def cached_tree() -> Path:
    """The bootable tree for PACKAGES, building it (≈1–2 min) only if it is not cached."""
    key = hashlib.sha256(" ".join((SUITE, *PACKAGES)).encode()).hexdigest()[:12]
    tree = CACHE / f"{SUITE}-{key}"
    if (tree / ".complete").exists():
        return tree
    ensure_host_tools()
    shutil.rmtree(tree, ignore_errors=True)
    tree.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(tree),
            _mirror(),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # No getty on a console nobody reads; the container must boot quickly and quietly.
    for unit in ("getty@tty1.service", "console-getty.service"):
        (tree / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (tree / "etc/systemd/system" / unit).symlink_to("/dev/null")
    (tree / "etc/hostname").write_text("mailbot-test\n")
    (tree / ".complete").write_text(key + "\n")
    return tree


class Container:
    def __init__(self, workdir: Path) -> None:
        self.root = workdir / "root"
        self.log_path = workdir / "nspawn.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def boot(self, tree: Path) -> Container:
        subprocess.run(["cp", "-a", "--reflink=auto", f"{tree}/.", str(self.root)], check=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the container
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "-q",
                "-D",
                str(self.root),
                "-b",
                "--register=no",
                "--keep-unit",
                "--resolv-conf=off",
                "--timezone=off",
                "--link-journal=no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not self.pid:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("container did not start:\n" + self.log_path.read_text())
            self.pid = self._find_init()
            time.sleep(0.1)
        while True:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"container stuck in {state!r}:\n" + self.log_path.read_text())
            time.sleep(0.2)
        return self

    def _find_init(self) -> int:
        assert self.proc is not None
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        todo = list(children.get(self.proc.pid, []))
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
            if (
                nspid
                and nspid.group(1).split()[-1] == "1"
                and "systemd" in Path(f"/proc/{pid}/comm").read_text()
            ):
                return pid
            todo.extend(children.get(pid, []))
        return 0

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=ENV,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, "utf-8")
        target.chmod(mode)

    def shutdown(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.run("systemctl", "poweroff", "--no-block", check=False, timeout=10)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
