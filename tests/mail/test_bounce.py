"""Delivery reports read from their bytes (mail/bounce.py), and which recipients of
ours they say failed (core/bounce.py)."""

from __future__ import annotations

from feishu_mailbot.core.bounce import Failure, describe, failed
from feishu_mailbot.mail.reply import parse
from tests import bounces

OURS = "<0a1b2c@feishu-mailbot>"
TO = ("oncall@example.com", "LiSi@example.com")


def test_a_postfix_report_names_the_recipient_its_status_and_the_servers_words() -> None:
    mail = parse(bounces.postfix(OURS, "lisi@example.com"))
    assert mail.report is not None and mail.report.standard
    assert mail.report.returned_ids == ("0a1b2c@feishu-mailbot",)
    (failure,) = failed(mail.report, TO)
    assert failure == Failure(
        "lisi@example.com",
        "5.1.1",
        "550 5.1.1 <lisi@example.com>: Recipient address rejected: User unknown in virtual"
        " mailbox table",
    )
    assert describe(failure).startswith("lisi@example.com: 5.1.1 550 5.1.1 <lisi@")


def test_a_delay_warning_and_a_recipient_not_ours_mark_nothing() -> None:
    delayed = parse(bounces.postfix(OURS, "lisi@example.com", action="delayed", status="4.4.1"))
    assert delayed.report is not None and failed(delayed.report, TO) == ()
    other = parse(bounces.postfix(OURS, "stranger@example.com"))
    assert other.report is not None and failed(other.report, TO) == ()


def test_an_exchange_global_report_keeps_the_address_our_mail_named() -> None:
    mail = parse(bounces.exchange(OURS, "lisi@example.com"))
    assert mail.report is not None
    # The returned mail's own Message-ID, not one quoted in its body.
    assert mail.report.returned_ids == ("0a1b2c@feishu-mailbot",)
    (failure,) = failed(mail.report, TO)
    assert failure.address == "lisi@example.com" and failure.status == "5.1.10"
    assert "找不到收件人" in failure.diagnostic


def test_prose_reports_are_searched_for_our_recipients_only() -> None:
    for raw, words in (
        (bounces.qmail(OURS, "lisi@example.com"), "no mailbox here by that name"),
        (bounces.tencent(OURS, "lisi@example.com"), "收件人: lisi@example.com"),
    ):
        mail = parse(raw)
        assert mail.report is not None and not mail.report.standard
        assert "0a1b2c@feishu-mailbot" in mail.report.returned_ids
        (failure,) = failed(mail.report, TO)
        assert failure.address == "lisi@example.com" and words in failure.diagnostic
    qmail = parse(bounces.qmail(OURS, "lisi@example.com")).report
    assert qmail is not None and failed(qmail, TO)[0].status == "5.1.1"  # from "(#5.1.1)"


def test_a_persons_mail_is_not_a_report_even_when_it_says_undelivered() -> None:
    raw = (
        "From: 张三 <zhangsan@example.com>\r\nTo: bot@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender?\r\nMessage-ID: <p-1@example.com>\r\n"
        f"In-Reply-To: {OURS}\r\n\r\n我收到了一封退信，是怎么回事？\r\n"
    ).encode()
    assert parse(raw).report is None


def test_a_prose_report_marks_only_who_it_says_failed_not_the_quoted_to_line() -> None:
    """qmail quotes the returned mail, To: line and all; li@ is also inside zhangli@."""
    raw = bounces.qmail(OURS, "li@corp.example").replace(
        b"To: li@corp.example", b"To: zhangli@corp.example, wang@corp.example, li@corp.example"
    )
    report = parse(raw).report
    assert report is not None
    everyone = ("zhangli@corp.example", "wang@corp.example", "Li <LI@corp.example>")
    assert [f.address for f in failed(report, everyone)] == ["li@corp.example"]


def test_a_reports_fields_are_stored_only_as_plain_status_and_address() -> None:
    raw = bounces.postfix(OURS, "lisi@example.com").replace(
        b"Status: 5.1.1", b"Status: 5.1.1\x00; DROP"
    )
    report = parse(raw).report
    assert report is not None
    (failure,) = failed(report, TO)
    assert failure.status == "5.1.1" and "\x00" not in failure.diagnostic
