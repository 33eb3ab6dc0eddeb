"""The MIME writer: whatever it writes, the stdlib parser reads back exactly."""

from __future__ import annotations

import base64
import email
import email.policy
import io
import random
import re
from email.message import EmailMessage

import pytest

from feishu_mailbot.mail import mime

TRICKY = [
    "",
    "plain ascii",
    "[研发群] 张三: 上线通知",
    "紧急" * 60,  # one long run of CJK, no spaces to fold at
    "emoji 🚀🔥 and 漢字 mixed with ascii words " * 4,
    "ascii " * 40,  # long, folds at spaces
    "x" * 120,  # one ASCII word too long to fold: encoded instead
    "looks like =?utf-8?b?QmNjOiB4?= an encoded word",
    "tabs\tare kept",
    "ends with a space ",  # values are single_line()d before, but the writer keeps them
    "é" * 1 + "a" * 44 + "é",  # multi-byte characters on chunk edges
]


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def mail_with(*headers: str, body: mime.Part | None = None) -> bytes:
    return mime.render(list(headers), body or mime.text("body"))


def random_text(rng: random.Random) -> str:
    alphabet = "ab c,.:;<>@\"'()=?_-" + "研发群日报紧急故障" + "🚀é"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 140)))


@pytest.mark.parametrize("value", TRICKY)
def test_header_round_trips_and_fits_lines(value: str) -> None:
    line = mime.header("Subject", value)
    parsed = parse(mail_with(line))
    assert parsed["Subject"] == value
    for physical in line.split("\r\n"):
        assert len(physical) <= 998
        if "=?utf-8?b?" in physical:
            assert len(physical) <= mime.MAX_LINE


def test_random_headers_round_trip() -> None:
    rng = random.Random(20261125)
    for _ in range(300):
        value = random_text(rng).lstrip(" ")  # a leading blank is not part of a header value
        assert parse(mail_with(mime.header("X-Test", value)))["X-Test"] == value, value


def test_a_line_break_in_a_header_is_refused() -> None:
    for bad in ("a\r\nBcc: x@evil.example", "a\nb", "a\rb"):
        with pytest.raises(ValueError, match="line break"):
            mime.header("Subject", bad)


@pytest.mark.parametrize(
    ("name", "addr"),
    [
        ("", "bot@example.com"),
        ("Feishu Mailbot", "bot@example.com"),
        ("Mailbot, Ops Team", "ops@example.com"),
        ('The "Bot"', "bot@example.com"),
        ("飞书机器人", "bot@example.com"),
        ("日报机器人 · 研发中心 · " * 4, "bot@example.com"),
    ],
)
def test_address_round_trips(name: str, addr: str) -> None:
    parsed = parse(mail_with(f"From: {mime.address((name, addr))}"))
    (mailbox,) = parsed["From"].addresses
    assert mailbox.addr_spec == addr
    assert mailbox.display_name == name


def test_long_recipient_lists_fold_and_round_trip() -> None:
    recipients = [f"person{i}@example.com" for i in range(30)]
    line = mime.address_list("To", recipients)
    assert all(len(physical) <= mime.MAX_LINE for physical in line.split("\r\n"))
    parsed = parse(mail_with(line))
    assert [a.addr_spec for a in parsed["To"].addresses] == recipients


def test_tree_and_bodies_round_trip() -> None:
    png = bytes(range(256)) * 10
    body = mime.Multipart(
        "mixed",
        (
            mime.Multipart(
                "alternative",
                (
                    mime.text("纯文本\n第二行\n"),
                    mime.Multipart(
                        "related",
                        (
                            mime.text('<img src="cid:a@b">', "html"),
                            mime.Leaf("image/png", png, "inline", "图.png", "a@b"),
                        ),
                    ),
                ),
            ),
            mime.Leaf("application/pdf", b"%PDF", "attachment", "报告 (终版).pdf"),
            mime.Leaf("text/plain", "GBK 文件".encode("gbk"), "attachment", 'a "quoted".txt'),
        ),
    )
    raw = mail_with("Subject: t", body=body)
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line endings only
    assert max(len(line) for line in raw.split(b"\r\n")) <= mime.MAX_LINE
    parsed = parse(raw)
    assert parsed.get_content_type() == "multipart/mixed"
    plain = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    assert plain.get_content() == "纯文本\n第二行\n"
    assert html.get_content() == '<img src="cid:a@b">'
    (image,) = [p for p in parsed.walk() if p.get_content_type() == "image/png"]
    assert image["Content-ID"] == "<a@b>"
    assert image.get_content_disposition() == "inline"
    assert image.get_filename() == "图.png"
    assert image.get_content() == png
    files = list(parsed.iter_attachments())
    assert [f.get_filename() for f in files] == ["报告 (终版).pdf", 'a "quoted".txt']
    assert files[0].get_content() == b"%PDF"
    # A file's bytes are its own: no charset is claimed for an attached text file.
    assert files[1].get_param("charset") is None
    assert files[1].get_payload(decode=True) == "GBK 文件".encode("gbk")
    assert not parsed.defects and not any(p.defects for p in parsed.walk())


def test_boundaries_are_unguessable() -> None:
    body = mime.Multipart("alternative", (mime.text("a"), mime.text("b", "html")))
    assert mail_with(body=body) != mail_with(body=body)


def test_a_long_plain_file_name_keeps_every_line_within_rfc_5322() -> None:
    name = "quarterly-report-" * 70 + ".pdf"  # 1194 ASCII characters, no space to fold at
    leaf = mime.Leaf("application/pdf", b"%PDF", disposition="attachment", filename=name)
    raw = mail_with("Subject: x", body=mime.Multipart("mixed", (mime.text("hi"), leaf)))
    assert max(len(line) for line in raw.split(b"\r\n")) <= mime.MAX_LINE
    [part] = parse(raw).iter_attachments()
    assert part.get_filename() == name


def test_writing_in_chunks_gives_the_bytes_rendering_gives() -> None:
    """The streamed base64 of a large part is the one-piece base64, line for line."""
    data = random.Random(7).randbytes(3 * 57 * 1150 + 1234)
    body = mime.Multipart("mixed", (mime.text("正文"), mime.Leaf("application/zip", data)))
    composed = mime.Mail(("Subject: x",), body)
    streamed = io.BytesIO()
    composed.write(streamed)
    boundary = re.compile(rb"=_[0-9a-f]{24}")
    whole = base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert whole in streamed.getvalue()
    assert boundary.sub(b"B", streamed.getvalue()) == boundary.sub(b"B", composed.render())
    [_, part] = parse(streamed.getvalue()).iter_parts()
    assert part.get_content() == data
