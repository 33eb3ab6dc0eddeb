"""The one mail an unsubscribe request is answered with: which rules' mail stops.

It goes only to a recipient of those rules who asked from that address (and,
with `trusted_authserv_id`, was vouched for), so it is never backscatter.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from feishu_mailbot.core.text import single_line
from feishu_mailbot.mail import mime
from feishu_mailbot.mail.headers import base_headers


def confirmation(
    *, sender: str, to: str, rules: Sequence[str], message_id: str, date: datetime
) -> tuple[str, bytes]:
    """(subject, bytes) of the confirmation to `to`, who left `rules`."""
    names = "、".join(single_line(r) for r in rules)
    subject = f"已退订：{names}"
    text = (
        f"{to} 将不再收到规则「{names}」转发的邮件。\n\n"
        "如需恢复，请联系管理员（feishu-mailbot subscriptions --restore）。\n\n"
        "-- \n由 feishu-mailbot 发送\n"
    )
    headers = base_headers(
        subject=subject, sender=sender, to=[to], message_id=message_id, date=date
    )
    return subject, mime.render(headers, mime.text(text))
