"""The bot's mailbox over IMAP (mail/imap.py) against a real Dovecot (tests/dovecot.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from feishu_mailbot.config.settings import Secret
from feishu_mailbot.mail.imap import ImapError, Mailbox, mailbox_name
from tests.dovecot import PASSWORD, Dovecot
from tests.smtp_server import free_port


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    with Dovecot() as server:
        yield server


def mail(n: int) -> bytes:
    return (
        f"From: zhangsan@example.com\r\nTo: bot@example.com\r\nSubject: Re: {n}\r\n"
        f"Message-ID: <reply-{n}@mail.example.com>\r\nContent-Type: text/plain; charset=utf-8"
        f"\r\n\r\n第 {n} 封回复\r\n"
    ).encode()


def test_mailbox_names_are_written_in_modified_utf7() -> None:
    assert mailbox_name("INBOX") == '"INBOX"'
    assert mailbox_name("已处理") == '"&XfJZBHQG-"'  # U+5DF2 U+5904 U+7406
    assert mailbox_name("R&D/回复") == '"R&-D/&Vt5ZDQ-"'
    assert mailbox_name('a"b') == '"a\\"b"'


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_the_mailbox_opens_and_says_who_the_client_is(dovecot: Dovecot, security: str) -> None:
    box = Mailbox(dovecot.settings(security))  # type: ignore[arg-type]
    try:
        opened = box.open()
        assert opened.uidvalidity > 0 and opened.idle
    finally:
        box.shutdown()
    assert "feishu-mailbot" in dovecot.log.read_text()  # the ID command, as Dovecot logged it


def test_new_mail_is_found_by_uid_fetched_unseen_then_marked_and_moved(dovecot: Dovecot) -> None:
    box = Mailbox(dovecot.settings("tls"))
    try:
        box.open()
        last = max(box.uids_after(0), default=0)
        assert box.uids_after(last) == []  # "n:*" names the newest mail; not taken as new
        dovecot.append(mail(1))
        dovecot.append(mail(2))
        first, second = box.uids_after(last)
        assert box.uids_after(first) == [second]
        assert box.fetch(first) == mail(1)
        assert "\\Seen" not in dovecot.flags()[-2]  # fetched with BODY.PEEK
        box.mark(first)
        assert "\\Seen" in dovecot.flags()[-2]
        conn = dovecot.session()
        conn.create(mailbox_name("已处理"))
        conn.logout()
        box.move(second, "已处理")
        assert box.fetch(second) is None
        assert len(dovecot.flags("&XfJZBHQG-")) == 1
    finally:
        box.shutdown()


def test_idle_wakes_for_new_mail_and_for_a_stopping_daemon(dovecot: Dovecot) -> None:
    box = Mailbox(dovecot.settings("tls"))
    try:
        box.open()
        assert box.idle(0.2) is False  # nothing came: a timeout
        threading.Timer(0.3, dovecot.append, (mail(3),)).start()
        started = time.monotonic()
        assert box.idle(20) is True
        assert time.monotonic() - started < 15
        last = box.uids_after(0)[-1]
        assert box.fetch(last) == mail(3)  # the session works after IDLE
        threading.Timer(0.3, box.interrupt).start()
        started = time.monotonic()
        assert box.idle(20) is False
        assert time.monotonic() - started < 15
        assert box.uids_after(last) == []
    finally:
        box.shutdown()


def test_a_refused_login_says_so_without_the_password(dovecot: Dovecot) -> None:
    box = Mailbox(replace(dovecot.settings("tls"), password=Secret("wrong-" + PASSWORD)))
    with pytest.raises(ImapError) as caught:
        box.open()
    box.shutdown()
    text = str(caught.value)
    assert "LOGIN failed" in text and "AUTHENTICATIONFAILED" in text.upper()
    assert PASSWORD not in text


def test_a_certificate_nobody_trusts_is_named(dovecot: Dovecot) -> None:
    box = Mailbox(replace(dovecot.settings("tls"), ca_file=None))
    with pytest.raises(ImapError, match=r"not trusted.*set ca_file"):
        box.open()
    box.shutdown()


def test_a_server_that_is_down_is_named(dovecot: Dovecot) -> None:
    box = Mailbox(replace(dovecot.settings("starttls"), port=free_port()))
    with pytest.raises(ImapError, match=r"connect failed: connection refused"):
        box.open()
    box.shutdown()


def test_a_server_without_idle_or_move_is_polled_and_moved_to_by_copy() -> None:
    with Dovecot(capabilities="IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UIDPLUS") as small:
        box = Mailbox(small.settings("tls"))
        try:
            assert box.open().idle is False
            small.append(mail(1))
            (uid,) = box.uids_after(0)
            conn = small.session()
            conn.create(mailbox_name("Replies"))
            conn.logout()
            conn = small.session()  # a mail a person marked deleted but did not expunge
            small.append(mail(2))
            (other,) = [u for u in box.uids_after(uid)]
            conn.uid("STORE", str(other), "+FLAGS", "(\\Deleted)")
            conn.logout()
            box.move(uid, "Replies")
            assert box.uids_after(0) == [other]  # copied, then this one expunged (UID EXPUNGE)
            assert len(small.flags("Replies")) == 1
        finally:
            box.shutdown()


def test_a_folder_to_file_into_that_is_not_there_is_named_at_open(dovecot: Dovecot) -> None:
    box = Mailbox(dovecot.settings("tls"))
    with pytest.raises(ImapError, match=r"LIST 不存在 failed: there is no folder '不存在'"):
        box.open(("不存在",))
    box.shutdown()


def test_mail_announced_with_another_answer_is_not_waited_for_in_idle(dovecot: Dovecot) -> None:
    box = Mailbox(dovecot.settings("tls"))
    try:
        box.open()
        dovecot.append(mail(9))
        last = box.uids_after(0)[-1]
        dovecot.append(mail(10))
        box.mark(last)  # its answer carries "* n EXISTS" for the new mail
        assert box.idle(5) is True  # the server told us already; it will not say it again
        assert len(box.uids_after(last)) == 1
    finally:
        box.shutdown()
