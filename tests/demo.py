"""`make demo`: the daemon against the Feishu emulator and a local SMTP server.

Posts a little chat traffic (Chinese text, a rich-text post with an image, an
image, a file, a message from a group that is not allowed, a recall) and
prints every email that comes out, then exits 0.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import warnings
from email.message import EmailMessage
from pathlib import Path

from tests.feishu_emulator import FeishuEmulator
from tests.harness import SMTP_PASSWORD, SMTP_USER, Bot, wait_until, write_config
from tests.smtp_server import SmtpServer

# A 1×1 PNG, so the demo needs no image files.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f80f0000010100005b1d3e2b0000000049454e44ae426082"
)

RULES = """\
- name: oncall
  keywords: [故障, 紧急]
  to: [oncall@example.com]
  subject: "[{chat_name}] {sender_name}: {preview}"
  notify_recall: true
- name: archive
  regex: '.'
  to: [archive@example.com]
  subject: "[归档] {chat_name} · {sender_name}"
"""


def show(mail: EmailMessage) -> str:
    lines = [f"{name}: {mail[name]}" for name in ("From", "To", "Subject", "Date", "Message-ID")]
    text = mail.get_body(preferencelist=("plain",))
    body = text.get_content().rstrip() if text is not None else "(no text part)"
    lines += ["", *("    " + line for line in body.splitlines())]
    for part in mail.iter_attachments():
        data = part.get_content()
        size = len(data) if isinstance(data, bytes | str) else 0
        lines.append(f"    📎 {part.get_filename()} ({part.get_content_type()}, {size} bytes)")
    html = mail.get_body(preferencelist=("html",))
    if html is not None:
        lines.append(f"    (+ HTML alternative, {len(html.get_content())} characters)")
    return "\n".join(lines)


def main() -> int:
    # aiosmtpd warns about the test SMTP server's own settings (AUTH without TLS, on
    # loopback): true, and not the demo's business (pytest is told so in pyproject.toml).
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
    with (
        tempfile.TemporaryDirectory(prefix="feishu-mailbot-demo-") as tmp,
        FeishuEmulator(ping_interval=5) as emulator,
        SmtpServer(require_auth=(SMTP_USER, SMTP_PASSWORD)) as smtp,
    ):
        directory = Path(tmp)
        emulator.register_chat("oc_team", "研发群")
        emulator.register_user("ou_alice", "张三")
        emulator.register_user("ou_bob", "李四")
        emulator.register_resource("img_v2_demo", PNG, "image/png")
        emulator.register_resource(
            "file_v2_demo", "会议纪要\n".encode() * 20, "text/plain", "会议纪要.txt"
        )
        config = write_config(
            directory, feishu_url=emulator.base_url, smtp_port=smtp.port, rules=RULES
        )
        config.chmod(0o600)  # it holds the (test) secrets, as /etc/feishu-mailbot.yaml would
        bot = Bot(config, directory)
        print(f"Feishu emulator at {emulator.base_url}, SMTP server at 127.0.0.1:{smtp.port}")
        print("chats allowed: oc_team (研发群); the rules:")
        print("".join(f"    {line}\n" for line in RULES.splitlines()), end="")
        print("starting: python -m feishu_mailbot --config", config, "run")
        bot.start()
        print("daemon is connected and ready; posting chat traffic …\n")
        first = emulator.push_text(
            "oc_team", "ou_alice", "线上故障：支付接口超时，@_user_1 请看一下", mentions=["ou_bob"]
        )
        emulator.push_message(
            "oc_team",
            "ou_bob",
            "post",
            {
                "title": "今日进展",
                "content": [
                    [
                        {"tag": "text", "text": "完成了 "},
                        {"tag": "text", "text": "登录重构", "style": ["bold"]},
                    ],
                    [{"tag": "a", "text": "设计文档", "href": "https://example.com/design"}],
                    [{"tag": "img", "image_key": "img_v2_demo"}],
                ],
            },
        )
        emulator.push_message("oc_team", "ou_alice", "image", {"image_key": "img_v2_demo"})
        emulator.push_message(
            "oc_team", "ou_bob", "file", {"file_key": "file_v2_demo", "file_name": "会议纪要.txt"}
        )
        emulator.push_text("oc_elsewhere", "ou_alice", "紧急！这条来自未授权的群，不会转发")
        expected = 6  # oncall + archive for the first, archive for the other three, a recall note
        wait_until(lambda: len(smtp.messages) >= expected - 1, 20, "the first emails")
        emulator.push_recall(first["event"]["message"]["message_id"], "oc_team")
        wait_until(lambda: len(smtp.messages) >= expected, 20, "the recall notice")
        time.sleep(0.5)
        bot.stop()
        for i, mail in enumerate(smtp.messages, 1):
            print(f"━━━━━━━━━━━━━━━━━━━━ email {i} of {len(smtp.messages)} ━━━━━━━━━━━━━━━━━━━━")
            print(show(mail))
            print()
        print("━━━━━━━━━━━━━━━━━━━━ daemon log ━━━━━━━━━━━━━━━━━━━━")
        print(bot.log().rstrip())
        print()
        leaked = [m for m in smtp.messages if "未授权" in str(m.get_body(("plain",)))]
        print(
            "the message from oc_elsewhere (a chat not in `chats`) was acknowledged to Feishu "
            "and dropped: not stored, no mail"
            if not leaked
            else "BUG: oc_elsewhere was mailed"
        )
        return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
