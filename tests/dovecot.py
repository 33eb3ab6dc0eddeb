"""A real Dovecot IMAP server on loopback for tests: Debian's dovecot-imapd, run by us.

A config of its own in a temporary directory (never the packaged one, whose
service `make test` does not start: DESIGN §4): one passwd-file user, a
Maildir in that directory, a plain port (STARTTLS offered) and a TLS port with
a certificate of the test CA (tests/certs.py). Dovecot runs in the foreground
(`-F`) as a child of the test; under root its mail processes run as `nobody`,
who owns the Maildir, its own processes as the users the package created.

    with Dovecot() as imap:
        imap.append(raw_mail)            # as a delivery would
        imap.settings(security="tls")    # ImapSettings for the bot
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from feishu_mailbot.config.settings import ImapSettings, PemBundle, Secret, Security
from tests import certs
from tests.smtp_server import free_port

HOST = "127.0.0.1"
USER = "bot@example.com"
PASSWORD = "imap-test-secret-41d7"
PROCESSED = "已处理"  # a folder the dovecot fixture (conftest.py) creates
DOVECOT = "/usr/sbin/dovecot"


_CONFIG = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = imap
listen = {host}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
imap_id_log = *
first_valid_uid = 1
mail_location = maildir:{dir}/mail/%n
{users}{capabilities}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/mail/%n
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""


class Dovecot:
    """`capabilities`: what the server lists after LOGIN, instead of all it has (an
    older or smaller server: no IDLE, no MOVE)."""

    def __init__(self, capabilities: str | None = None) -> None:
        self.capabilities = capabilities
        self.dir = Path(tempfile.mkdtemp(prefix="fmb-imap-"))
        self.port = free_port()
        self.tls_port = free_port()
        self.log = self.dir / "dovecot.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leaf = certs.leaf([HOST, "localhost"])

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _config(self) -> Path:
        if os.geteuid() == 0:
            mail = pwd.getpwnam("nobody")
            uid, gid = mail.pw_uid, mail.pw_gid
            users = ""
        else:  # everything as the caller
            uid, gid = os.getuid(), os.getgid()
            me = pwd.getpwuid(uid).pw_name
            users = f"default_internal_user = {me}\ndefault_login_user = {me}\n"
        # Dovecot's auth process (`dovecot`) and mail processes (`nobody`) go through it.
        self.dir.chmod(0o755)
        (self.dir / "mail").mkdir(exist_ok=True)
        os.chown(self.dir / "mail", uid, gid)
        (self.dir / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        path = self.dir / "dovecot.conf"
        path.write_text(
            _CONFIG.format(
                dir=self.dir,
                host=HOST,
                cert=self.leaf.cert,
                key=self.leaf.key,
                users=users,
                capabilities=""
                if self.capabilities is None
                else f"imap_capability = {self.capabilities}\n",
                uid=uid,
                gid=gid,
                port=self.port,
                tls_port=self.tls_port,
            )
        )
        return path

    def start(self) -> None:
        """Start (again, after `stop`, with the same mail), and wait until it answers."""
        config = self._config()
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"dovecot exited: {err}\n{self._log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1):
                return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not listen on {self.port}:\n{self._log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def settings(self, security: Security = "starttls", **changes: Any) -> ImapSettings:
        """What the bot's config would say for this server."""
        return ImapSettings(
            host=HOST,
            port=self.tls_port if security == "tls" else self.port,
            security=security,
            username=USER,
            password=Secret(PASSWORD),
            ca_file=PemBundle(certs.ca_file(), Path(certs.ca_file()).read_text()),
            timeout=10.0,
            **changes,
        )

    def session(self) -> imaplib.IMAP4:
        """The test's own session, logged in over TLS, INBOX selected."""
        context = ssl.create_default_context(cafile=certs.ca_file())
        conn = imaplib.IMAP4_SSL(HOST, self.tls_port, ssl_context=context, timeout=10)
        conn.login(USER, PASSWORD)
        conn.select("INBOX")
        return conn

    def append(self, raw: bytes, mailbox: str = "INBOX") -> None:
        """A mail delivered into `mailbox`, as a delivery agent would put it there."""
        conn = self.session()
        try:
            kind, data = conn.append(mailbox, "", imaplib.Time2Internaldate(time.time()), raw)
            assert kind == "OK", data
        finally:
            conn.logout()

    def deliver(self, raw: bytes) -> None:
        """A mail put into the Maildir's new/ as a delivery agent would, also while the
        server is stopped: Dovecot finds it when a client next looks."""
        new = self.dir / "mail" / USER.partition("@")[0] / "new"
        new.mkdir(parents=True, exist_ok=True)
        path = new / f"{time.time_ns()}.M1P{os.getpid()}.fmb-test"
        path.write_bytes(raw)
        owner = (self.dir / "mail").stat()
        for made in (path, new, new.parent):
            os.chown(made, owner.st_uid, owner.st_gid)

    def flags(self, mailbox: str = "INBOX") -> list[str]:
        """Each mail's flags in `mailbox`, in UID order."""
        conn = self.session()
        try:
            conn.select(mailbox)
            kind, data = conn.uid("FETCH", "1:*", "(FLAGS)")
            assert kind == "OK", data
            return [d.decode() for d in data if isinstance(d, bytes)]
        finally:
            conn.logout()
