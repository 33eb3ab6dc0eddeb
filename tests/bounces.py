"""Delivery reports as the servers the bot's mail meets write them.

Postfix and Exim: RFC 3464, the returned headers as text/rfc822-headers.
Exchange: RFC 6533's global form when an address is not ASCII, the mail itself
returned as message/rfc822. qmail and the Chinese providers' "系统退信": prose.
"""

from __future__ import annotations

import base64
import uuid


def postfix(message_id: str, failed: str, action: str = "failed", status: str = "5.1.1") -> bytes:
    return f"""Return-Path: <>
From: MAILER-DAEMON@mx.example.com (Mail Delivery System)
To: bot@example.com
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
Message-ID: <dsn-{uuid.uuid4().hex}@mx.example.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="B1"

--B1
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.com.

<{failed}>: host mx.example.org said: 550 {status} <{failed}>: Recipient
    address rejected: User unknown in virtual mailbox table

--B1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com
X-Postfix-Queue-ID: 4Ab1C2
Arrival-Date: Mon,  7 Dec 2026 10:02:11 +0800 (CST)

Final-Recipient: rfc822; {failed}
Original-Recipient: rfc822;{failed}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; 550 {status} <{failed}>: Recipient address rejected: User
    unknown in virtual mailbox table

--B1
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: bot@example.com
To: oncall@example.com, {failed}
Subject: =?utf-8?b?W+WAvOePree+pF0=?=
Message-ID: {message_id}

--B1--
""".replace("\n", "\r\n").encode()


def exchange(message_id: str, failed: str) -> bytes:
    """RFC 6533: UTF-8 in the report's fields, the whole mail returned."""
    return f"""From: postmaster@corp.example.com
To: bot@example.com
Subject: =?utf-8?b?5peg5rOV5Lyg6YCSOiDlgLznj63nvqQ=?=
Message-ID: <ndr-1@corp.example.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=global-delivery-status; boundary="B2"

--B2
Content-Type: text/plain; charset=utf-8

无法访问收件人 {failed}。

--B2
Content-Type: message/global-delivery-status

Reporting-MTA: dns;corp.example.com

Original-Recipient: rfc822;{failed}
Final-Recipient: rfc822;张三@corp.example.com
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; 找不到收件人

--B2
Content-Type: message/rfc822

From: bot@example.com
To: {failed}
Subject: test
Message-ID: {message_id}
Content-Type: text/plain; charset=utf-8

Message-ID: <not-this-one@example.com>

--B2--
""".replace("\n", "\r\n").encode()


def qmail(message_id: str, failed: str) -> bytes:
    return f"""From: MAILER-DAEMON@mail.example.net
To: bot@example.com
Subject: failure notice
Message-ID: <qmail-1@mail.example.net>

Hi. This is the qmail-send program at mail.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{failed}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Return-Path: <bot@example.com>
From: bot@example.com
To: {failed}
Message-ID: {message_id}
Subject: test
""".replace("\n", "\r\n").encode()


def tencent(message_id: str, failed: str) -> bytes:
    """A "系统退信" in GB 18030, base64, with the original's headers quoted."""
    body = (
        f"您发送的邮件被退回。\r\n收件人: {failed}\r\n"
        "退信原因: 收件人邮箱不存在 550 Mailbox not found\r\n\r\n"
        f"------ 原邮件信息 ------\r\nMessage-ID: {message_id}\r\n"
    )
    return (
        b"From: PostMaster@qq.com\r\n"
        b"To: bot@example.com\r\n"
        + b"Subject: =?gb18030?B?"
        + base64.b64encode("系统退信".encode("gb18030"))
        + b"?=\r\n"
        b"Message-ID: <tx-1@qq.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=gb18030\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(body.encode("gb18030"))
    )
