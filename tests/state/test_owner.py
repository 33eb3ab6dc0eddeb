"""Root's commands on the state never lock the daemon's user out of it.

The daemon runs as its own unprivileged user (here a real one, with the unit's
UMask=0077); an operator runs `send-report`, `status`, `retry`… as root, with root's
umask. Whatever those create in state_dir must stay usable by the daemon, and
`send-report --dry-run` must create nothing at all.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import conftest
from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, Bot, write_config
from tests.smtp_server import SmtpServer

USER = "fmb-test"  # the daemon's stand-in for feishu-mailbot
IMAGE = 120_000  # three of them: a digest over attachments.SPOOL_ABOVE (256 KiB)
REPORTS = "daily_report:\n  chat: oc_team\n  recipients: [boss@example.com]\n"
FILES = "- name: files\n  regex: '\\[文件\\]'\n  to: [files@example.com]\n"


@pytest.fixture(scope="module")
def account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
        )
        return pwd.getpwnam(USER)


@pytest.fixture
def place(account: pwd.struct_passwd) -> Iterator[Path]:
    """A directory the daemon's user can reach (pytest's tmp_path is root's 0700), with
    state_dir in it owned by that user, 0750, as systemd's StateDirectory= makes it."""
    top = Path(tempfile.mkdtemp(prefix="fmb-ownership-", dir="/tmp"))
    top.chmod(0o755)
    state = top / "state"
    state.mkdir(0o750)
    os.chown(state, account.pw_uid, account.pw_gid)
    try:
        yield top
    finally:
        conftest._logs.extend(top.glob("daemon-*.log"))
        shutil.rmtree(top)


def as_root(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A command as an operator runs it: root, with root's usual umask for secrets."""
    return subprocess.run(
        [sys.executable, "-m", "feishu_mailbot", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        umask=0o077,
    )


def daemon(place: Path, emulator: FeishuEmulator, smtp: SmtpServer) -> Bot:
    config = write_config(
        place, feishu_url=emulator.base_url, smtp_port=smtp.port, rules=FILES, extra=REPORTS
    )
    config.chmod(0o644)  # the package makes it root:feishu-mailbot 0640
    return Bot(config, place, user=USER)


def post_reports(emulator: FeishuEmulator, images: int) -> None:
    for n in range(images):
        key = f"img_report_{n}"
        emulator.register_resource(key, os.urandom(IMAGE), "image/png")
        post = {
            "title": f"日报 {n}",
            "content": [
                [{"tag": "text", "text": "今天的进展"}],
                [{"tag": "img", "image_key": key}],
            ],
        }
        emulator.wait_ack(emulator.push_message("oc_team", "ou_alice", "post", post))


def strangers(state: Path, account: pwd.struct_passwd) -> list[str]:
    """Whatever under `state` is not the daemon user's."""
    found = []
    for path in [state, *state.rglob("*")]:
        st = path.lstat()
        if (st.st_uid, st.st_gid) != (account.pw_uid, account.pw_gid):
            found.append(f"{path.relative_to(state.parent)} {st.st_uid}:{st.st_gid}")
    return found


def snapshot(state: Path) -> dict[str, tuple[int, int, int, int, int, str]]:
    """Every file and directory under `state`, byte for byte, with owner, mode and mtime."""
    seen = {}
    for path in [state, *sorted(state.rglob("*"))]:
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
        seen[str(path.relative_to(state))] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime_ns,
            digest,
        )
    return seen


def test_the_daemon_keeps_its_state_after_root_ran_send_report_and_status(
    place: Path, account: pwd.struct_passwd, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = daemon(place, emulator, smtp).start()
    post_reports(emulator, images=3)
    assert bot.stop() == 0

    sent = as_root(bot.config, "send-report")  # a digest over 256 KiB: a spool file
    assert sent.returncode == 0, sent.stderr
    assert "queued for boss@example.com" in sent.stdout
    shown = as_root(bot.config, "status")
    assert shown.returncode == 0, shown.stderr
    state = place / "state"
    assert list((state / "spool").iterdir()), "the digest was not spooled: test the wrong path"
    assert strangers(state, account) == []

    bot.start()  # as the daemon's user again: it sends root's digest from the spool
    [digest] = smtp.wait_for(1, timeout=30)
    images = [p for p in digest.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 3
    emulator.register_resource("file_big", os.urandom(400_000), "application/pdf", "大.pdf")
    emulator.push_message(
        "oc_team", "ou_bob", "file", {"file_key": "file_big", "file_name": "大.pdf"}
    )  # a mail of its own over 256 KiB: the daemon writes it to the spool itself
    forward = smtp.wait_for(2, timeout=30)[1]
    assert [p.get_filename() for p in forward.iter_attachments()] == ["大.pdf"]
    assert bot.stop() == 0
    assert "Permission denied" not in bot.log()
    assert list((state / "spool").iterdir()) == []  # both sent, both files gone


def test_root_leaves_wal_and_shm_the_daemon_can_write(
    place: Path, account: pwd.struct_passwd, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    """A root process that dies with the database open leaves its -wal and -shm
    behind: they must be the daemon user's, or the daemon cannot open its state."""
    bot = daemon(place, emulator, smtp).start()
    post_reports(emulator, images=1)
    assert bot.stop() == 0
    db = place / "state" / "feishu-mailbot.db"
    code = (
        "import os, sys; from feishu_mailbot.state import State; "
        "from feishu_mailbot.state import heartbeat; "
        f"s = State({str(db)!r}); s.write_now(heartbeat.last); os._exit(0)"
    )
    killed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        umask=0o077, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert killed.returncode == 0, killed.stderr
    assert (db.parent / "feishu-mailbot.db-wal").exists()
    assert strangers(place / "state", account) == []
    bot.start()
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "日报 又一条"))
    assert bot.stop() == 0


def test_send_report_dry_run_creates_nothing(
    place: Path, account: pwd.struct_passwd, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = daemon(place, emulator, smtp)
    state = place / "state"
    before = snapshot(state)  # no database yet
    for args in (("send-report", "--dry-run"), ("send-report",)):
        refused = as_root(bot.config, *args)
        assert refused.returncode == os.EX_UNAVAILABLE, refused.stdout + refused.stderr
        assert "no state database yet" in refused.stderr
        assert snapshot(state) == before

    bot.start()
    post_reports(emulator, images=1)
    assert bot.stop() == 0
    before = snapshot(state)
    dry = as_root(bot.config, "send-report", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "今天的进展" in dry.stdout and "queued" not in dry.stdout
    assert snapshot(state) == before
    assert smtp.messages == []


def test_a_spool_root_made_before_is_named_then_given_back(
    place: Path, account: pwd.struct_passwd, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    """Installs caught by the old trap: the daemon says what is wrong and what to do,
    and any command root runs on the state gives the directory back."""
    bot = daemon(place, emulator, smtp).start()
    assert bot.stop() == 0
    spool = place / "state" / "spool"
    spool.mkdir(0o700)  # as the old send-report left it: root's, and a root file in it
    (spool / "0123-old.eml").write_bytes(b"Subject: old\r\n\r\nold\r\n")
    bot.start()
    assert bot.stop() == 0
    assert f"{spool}: not writable by this user" in bot.current_log()
    assert as_root(bot.config, "status").returncode == 0
    assert strangers(place / "state", account) == []
    bot.start()
    assert bot.stop() == 0
    assert "not writable" not in bot.current_log()
