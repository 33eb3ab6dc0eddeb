"""Mail that came in (state/inbound.py), on both engines: the mail of ours it names,
each taken once, and how far a mailbox was read."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from feishu_mailbot.core.model import Delivery
from feishu_mailbot.core.reply import mail_key
from feishu_mailbot.mail.headers import make_message_id
from feishu_mailbot.state import inbound, messages, outbox
from feishu_mailbot.state.outbox import Prepared, mail_id_for
from tests.kit import Backend, message

OPS = Delivery(("ops@example.com", "lisi@example.com"), ("urgent",), "{preview}", False, True)


def test_a_reply_finds_the_nearest_mail_of_ours_it_names(tmp_path: Path, backend: Backend) -> None:
    state = backend.state(tmp_path / "db.sqlite")
    try:
        for n in (1, 2):
            msg = message(n)
            state.write_now(partial(messages.ingest, msg=msg, deliveries=[OPS], now=float(n)))
        state.write_now(partial(outbox.queue_planned, limit=10))
        digest = Prepared("日报", raw=b"mail")
        state.write_now(
            partial(
                outbox.queue, mail_id="digest/2026-12-01", kind="digest",
                recipients=["boss@example.com"], prepared=digest, now=3.0,
            )
        )  # fmt: skip
        first = mail_id_for("om_1", OPS.recipients)
        second = mail_id_for("om_2", OPS.recipients)
        # The key is the left part of the Message-ID the mail was sent with.
        assert make_message_id(first).startswith(f"<{mail_key(first)}@")
        found = state.read(
            partial(inbound.answered, keys=("unknown", mail_key(second), mail_key(first)))
        )
        assert found is not None
        answered, kind = found
        assert (answered.mail_id, answered.message_id, kind) == (second, "om_2", "forward")
        assert answered.recipients == OPS.recipients
        found = state.read(partial(inbound.answered, keys=(mail_key("digest/2026-12-01"),)))
        assert found is not None and (found[0].message_id, found[1]) == ("", "digest")
        assert state.read(partial(inbound.answered, keys=("unknown",))) is None
        assert state.read(partial(inbound.answered, keys=())) is None
    finally:
        state.close()


def test_a_mail_is_recorded_once_and_the_cursor_moves_per_mailbox(
    tmp_path: Path, backend: Backend
) -> None:
    state = backend.state(tmp_path / "db.sqlite")
    try:
        key = "reply-1@mail.example.com"
        assert not state.read(partial(inbound.taken, message_id=key))
        for outcome in (inbound.POSTED, inbound.REFUSED):  # the second changes nothing
            state.write_now(
                partial(
                    inbound.record, message_id=key, now=1.0, outcome=outcome, detail="",
                    mail_id="om_1/x",
                )
            )  # fmt: skip
        assert state.read(partial(inbound.taken, message_id=key))
        assert state.read(inbound.counts) == {inbound.POSTED: 1}
        assert state.read(partial(inbound.cursor, mailbox="INBOX")) is None
        state.write_now(partial(inbound.advance, mailbox="INBOX", uidvalidity=7, uid=3))
        state.write_now(partial(inbound.advance, mailbox="INBOX", uidvalidity=7, uid=5))
        state.write_now(partial(inbound.advance, mailbox="已处理", uidvalidity=9, uid=1))
        assert state.read(partial(inbound.cursor, mailbox="INBOX")) == inbound.Cursor(7, 5)
        assert state.read(partial(inbound.cursor, mailbox="已处理")) == inbound.Cursor(9, 1)
    finally:
        state.close()
