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
from collections.abc import Iterable, Iterator
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
    "python3-authres",
    "python3-psycopg2",  # the .deb's Recommends: the state on PostgreSQL
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


APT = Path("/etc/apt")
# One apt source: its types (deb, deb-src), URIs, suites and components.
Source = tuple[list[str], list[str], list[str], list[str]]
# What debootstrap can fetch from; apt's cdrom: and mirror+ methods it cannot.
_SCHEMES = ("http://", "https://", "file:/")


def _one_line_sources(text: str) -> Iterator[Source]:
    """(types, URIs, suites, components) of each line of a sources.list(5) one-line file:
    `deb [options] URI suite [component…]`, comments and blank lines skipped."""
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) < 3:
            continue
        kind, rest = words[0], words[1:]
        if rest[0].startswith("["):  # [arch=amd64 signed-by=…], spaces allowed inside
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            yield [kind], [rest[0]], [rest[1]], rest[2:]


def _deb822_sources(text: str) -> Iterator[Source]:
    """(types, URIs, suites, components) of each stanza of a deb822 .sources file;
    a stanza with `Enabled: no` is skipped, as apt skips it."""
    stanzas: list[dict[str, str]] = [{}]
    field = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanzas[-1]:
                stanzas.append({})
            continue
        if line[0] in " \t":  # a continuation line (Signed-By may carry a whole key)
            if field:
                stanzas[-1][field] += " " + line.strip()
            continue
        name, _, value = line.partition(":")
        field = name.strip().lower()
        stanzas[-1][field] = value.strip()
    for stanza in stanzas:
        if stanza and stanza.get("enabled", "yes").lower() != "no":
            types, uris, suites, components = (
                stanza.get(key, "").split() for key in ("types", "uris", "suites", "components")
            )
            yield types, uris, suites, components


def apt_mirror(
    files: Iterable[tuple[str, str]], suite: str = SUITE, component: str = "main"
) -> str | None:
    """The URI of the first `deb` source for `suite` with `component`, from apt source
    files given as (name, text) in apt's reading order: names ending in .sources are
    deb822, others one-line. The mirror apt already uses is the one this machine can
    reach, so debootstrap takes it rather than a host written into the tests."""
    for name, text in files:
        parse = _deb822_sources if name.endswith(".sources") else _one_line_sources
        for types, uris, suites, components in parse(text):
            if "deb" in types and suite in suites and component in components:
                for uri in uris:
                    if uri.startswith(_SCHEMES):
                        return uri
    return None


def apt_source_files(root: Path = APT) -> list[tuple[str, str]]:
    """sources.list, then sources.list.d/*.list and *.sources by name, as apt reads them."""
    parts = sorted(
        p for p in (root / "sources.list.d").glob("*") if p.suffix in (".list", ".sources")
    )
    paths = [root / "sources.list", *parts]
    return [(str(path), path.read_text("utf-8", "replace")) for path in paths if path.is_file()]


def debootstrap_mirror(root: Path = APT) -> str:
    """The mirror apt uses for SUITE main, or an error that says where to declare one."""
    mirror = apt_mirror(apt_source_files(root))
    if mirror is None:
        raise RuntimeError(
            f"no Debian mirror for debootstrap: looked for a `deb` source of suite {SUITE!r} "
            f"with component 'main' in {root}/sources.list and {root}/sources.list.d/*.list "
            "(one-line format) and *.sources (deb822), and found none. Add one, e.g. "
            f"`deb <your Debian mirror URL> {SUITE} main` to {root}/sources.list, and run "
            "apt-get update."
        )
    return mirror


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
            debootstrap_mirror(),
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
