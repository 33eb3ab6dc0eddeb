"""The workers in-process: a real state database, the emulator's REST API, their edges given.

The outbox takes its delivery backend as an argument (aiosmtpd's handler
style: the engine is handed its edges); here a backend that refuses once and then keeps what it is
sent shows that retries and bookkeeping live in the worker, whatever sends.
The action worker decides supplement or nothing when it runs, from the state.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import time
from collections.abc import Sequence
from datetime import date
from functools import partial
from pathlib import Path
from typing import BinaryIO

import pytest

from feishu_mailbot.compose.daily_report import Reporter
from feishu_mailbot.compose.names import NameResolver
from feishu_mailbot.compose.sources import Sources
from feishu_mailbot.config import load
from feishu_mailbot.config.settings import FeishuSettings, Secret, Settings
from feishu_mailbot.core.model import ActionRequest, Delivery, Download, Text
from feishu_mailbot.core.retry import RetryPolicy
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.mail.smtp import DeliveryError, Refused
from feishu_mailbot.state import Spool, digests, messages, outbox
from feishu_mailbot.state.outbox import Prepared
from feishu_mailbot.workers.actions import Actions
from feishu_mailbot.workers.outbox import Outbox
from tests.feishu_emulator import FeishuEmulator
from tests.harness import progress_while, write_config
from tests.kit import Backend, MemoryRelay, message, queued_digest, rig, until

ONCALL = Delivery(("oncall@example.com",), ("oncall",), "[{chat_name}] {preview}", False, False)


def settings(
    tmp_path: Path, emulator: FeishuEmulator, backend: Backend, extra: str = ""
) -> Settings:
    config = write_config(
        tmp_path, feishu_url=emulator.base_url, smtp_port=9, extra=extra + backend.config
    )
    return load.load(str(config))


def test_the_outbox_retries_through_any_delivery_backend(
    backend: Backend, tmp_path: Path, emulator: FeishuEmulator
) -> None:
    s = settings(tmp_path, emulator, backend)
    relay = MemoryRelay()

    async def main() -> None:
        async with rig(s, tmp_path / "state.db") as src:
            state = src.state
            worker = Outbox(src, lambda: None, transport=relay)
            await state.write(
                partial(
                    messages.ingest,
                    msg=message(1, "数据库故障"),
                    deliveries=(ONCALL,),
                    now=time.time(),
                )
            )
            task = asyncio.create_task(worker.run())
            await until(lambda: len(relay.sent) == 1)
            worker.stop()
            await task
            assert state.read(outbox.pending_count) == 0
            [row] = state.read(
                lambda tx: tx.execute("SELECT status, attempts FROM outbox").fetchall()
            )
            assert tuple(row) == ("sent", 2)  # refused once, then sent

    asyncio.run(main())
    mail = email.message_from_bytes(relay.sent[0], policy=email.policy.default)
    assert mail["Subject"] == "[研发群] 数据库故障"  # the chat name from the config
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None and "张三" in body.get_content()  # the sender, from Feishu


REPORTS = """\
daily_report:
  chat: oc_team
  recipients: [boss@example.com]
  acknowledge: reaction
"""


def test_a_report_is_supplemented_only_once_its_day_has_a_digest(
    backend: Backend, tmp_path: Path, emulator: FeishuEmulator
) -> None:
    s = settings(tmp_path, emulator, backend, extra=REPORTS)
    queued: list[str] = []

    async def main() -> list[str]:
        async with rig(s, tmp_path / "state.db") as src:
            state, api = src.state, src.api
            reporter = Reporter(src)
            worker = Actions(s, state, api, reporter, lambda: queued.append("wake"))
            task = asyncio.create_task(worker.run())
            report = ActionRequest("report", {"day": "2025-12-01"})
            first, second = message(1, "日报 第一份"), message(2, "日报 第二份")
            await state.write(
                partial(messages.ingest, msg=first, deliveries=(), now=1.0, requests=(report,))
            )
            worker.wake()
            await until(lambda: len(emulator.reactions) == 1)
            assert state.read(partial(digests.for_day, chat_id="oc_team", day="2025-12-01")) == []
            assert queued == []  # no digest yet: nothing to supplement
            assert (await reporter.build(date(2025, 12, 1))).queued  # the day's digest
            worker.wake()
            await state.write(
                partial(messages.ingest, msg=second, deliveries=(), now=2.0, requests=(report,))
            )
            worker.wake()
            await until(lambda: len(emulator.reactions) == 2)
            day = partial(digests.for_day, chat_id="oc_team", day="2025-12-01")
            # The reaction and the supplement are actions of their own, in either order.
            await until(lambda: len(state.read(day)) == 2, what="the supplement recorded")
            records = state.read(day)
            included = state.read(partial(digests.included, chat_id="oc_team", day="2025-12-01"))
            worker.stop()
            await task
        assert included == {"om_1", "om_2"}
        return [r.kind for r in records]

    assert asyncio.run(main()) == ["digest", "supplement"]
    assert queued == ["wake"]  # the supplement's mail
    assert [r["message_id"] for r in emulator.reactions] == ["om_1", "om_2"]


def test_a_digest_is_dated_by_the_reporter_s_clock(
    backend: Backend, tmp_path: Path, emulator: FeishuEmulator
) -> None:
    """The Date header comes from the clock the reporter is given, as its other times do."""
    s = settings(tmp_path, emulator, backend, extra=REPORTS)
    at = 1_764_583_200.0  # 2025-12-01 18:00 in Asia/Shanghai

    async def main() -> bytes:
        async with rig(s, tmp_path / "state.db", lambda: at) as src:
            state = src.state
            reporter = Reporter(src)
            report = message(1, "日报 第一份")
            await state.write(partial(messages.ingest, msg=report, deliveries=(), now=at))
            assert (await reporter.build(date(2025, 12, 1))).queued
            [(raw,)] = state.read(
                lambda tx: tx.execute("SELECT raw FROM outbox WHERE kind = 'digest'").fetchall()
            )
        return bytes(raw)

    digest = email.message_from_bytes(asyncio.run(main()), policy=email.policy.default)
    assert digest["Date"].datetime.timestamp() == at


def test_a_reply_to_a_message_that_cannot_be_read_is_mailed_without_its_quote(
    backend: Backend, tmp_path: Path, emulator: FeishuEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The stored message replied to is corrupt on disk: the reply still goes out; the
    quote is asked of Feishu (which no longer has it) and left out."""
    import dataclasses

    s = settings(tmp_path, emulator, backend)
    relay = MemoryRelay()
    relay.refuse_next = 0
    root = message(1, "数据库故障")
    reply = dataclasses.replace(
        message(2, "故障已修复"), root_id=root.message_id, parent_id=root.message_id
    )
    path = tmp_path / "state.db"

    async def main() -> None:
        state = backend.state(path, daemon=True)
        await state.write(partial(messages.ingest, msg=root, deliveries=(), now=time.time()))
        state.write_now(
            lambda tx: tx.execute(
                "UPDATE messages SET body = '{not json' WHERE message_id = 'om_1'"
            )
        )
        api = FeishuApi(s.feishu)
        worker = Outbox(Sources.of(s, state, api), lambda: None, transport=relay)
        await state.write(
            partial(messages.ingest, msg=reply, deliveries=(ONCALL,), now=time.time())
        )
        task = asyncio.create_task(worker.run())
        await until(lambda: len(relay.sent) == 1)
        worker.stop()
        await task
        await api.close()
        state.close()

    with caplog.at_level("ERROR", logger="feishu_mailbot.workers.outbox"):
        asyncio.run(main())
    assert "the message replied to cannot be read" in caplog.text
    mail = email.message_from_bytes(relay.sent[0], policy=email.policy.default)
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None and "故障已修复" in body.get_content()
    assert "\n> " not in body.get_content()
    assert emulator.rest_calls["/open-apis/im/v1/messages/om_1"] == 1


def test_ids_from_events_stay_one_path_segment(emulator: FeishuEmulator) -> None:
    """A key with '/', '?' or a control character must not change the endpoint asked."""
    tricky = "img/../../bot/v3/info?x=1\x7f"
    emulator.register_resource(tricky, b"\x89PNG\r\n\x1a\n", "image/png")

    async def main() -> Download:
        api = FeishuApi(FeishuSettings("cli_test", Secret("test-secret"), emulator.base_url))
        try:
            return await api.resource("om_1", tricky, "image", limit=1024)
        finally:
            await api.close()

    got = asyncio.run(main())
    assert (got.data, got.content_type) == (b"\x89PNG\r\n\x1a\n", "image/png")
    assert emulator.rest_calls["/open-apis/bot/v3/info"] == 0


class DeadRelay(MemoryRelay):
    """Refuses every mail, as a relay that is down does."""

    def send(self, raw: bytes | Path, sender: str, recipients: Sequence[str]) -> Refused:
        raise DeliveryError("421 service not available", permanent=False)


def test_a_clock_set_forward_does_not_fail_queued_mail(
    backend: Backend, tmp_path: Path, emulator: FeishuEmulator
) -> None:
    s = settings(tmp_path, emulator, backend)
    jumped = time.time() + 3 * 24 * 3600  # past give_up_after (2 days) for a fresh mail

    async def main() -> tuple[str, int]:
        async with rig(s, tmp_path / "state.db") as src:
            state, api, names = src.state, src.api, src.names
            worker = Outbox(
                Sources(s, state, api, names, lambda: jumped), lambda: None, DeadRelay()
            )
            await state.write(
                partial(
                    messages.ingest, msg=message(1, "故障"), deliveries=(ONCALL,), now=time.time()
                )
            )
            task = asyncio.create_task(worker.run())
            read = "SELECT status, attempts FROM outbox"
            await until(
                lambda: state.read(lambda tx: tx.execute(read).fetchone() or (0, 0))[1] >= 1
            )
            worker.stop()
            await task
            [(status, attempts)] = state.read(lambda tx: tx.execute(read).fetchall())
        return status, attempts

    # Old by the wall clock, but tried once: it waits for the relay, it is not given up.
    assert asyncio.run(main()) == ("pending", 1)


def test_give_up_needs_the_age_and_the_attempts() -> None:
    policy = RetryPolicy(initial=5, maximum=600, give_up_after=2 * 24 * 3600)
    assert policy.min_attempts() == 295  # 5, 10, … 600 s: that many tries fill two days
    assert not policy.expired(age=3 * 24 * 3600, attempts=1)  # a clock jump
    assert not policy.expired(age=3600, attempts=1000)
    assert policy.expired(age=2 * 24 * 3600 + 1, attempts=295)


def test_a_spool_file_that_is_gone_is_composed_again(
    backend: Backend, tmp_path: Path, emulator: FeishuEmulator
) -> None:
    """An operator's cleanup (or a lost disk block) must not cost the mail: the row is
    composed again, with the same Message-ID."""
    s = settings(tmp_path, emulator, backend)
    relay = MemoryRelay()
    relay.refuse_next = 0

    async def main() -> None:
        async with rig(s, tmp_path / "state.db") as src:
            state = src.state
            worker = Outbox(src, lambda: None, transport=relay)
            await state.write(
                partial(
                    messages.ingest,
                    msg=message(1, "数据库故障"),
                    deliveries=(ONCALL,),
                    now=time.time(),
                )
            )
            await state.write(partial(outbox.queue_planned, limit=10))
            [mail_id] = state.read(
                lambda tx: [r[0] for r in tx.execute("SELECT mail_id FROM outbox")]
            )
            stale = Prepared("old subject", spool="0" * 40 + ".eml")  # named, but not there
            await state.write(
                partial(outbox.begin_send, mail_id=mail_id, me="gone:1", prepared=stale)
            )
            await state.write(
                partial(outbox.requeue_interrupted, me=state.instance, now=time.time())
            )
            task = asyncio.create_task(worker.run())
            await until(lambda: len(relay.sent) == 1)
            worker.stop()
            await task

    asyncio.run(main())
    mail = email.message_from_bytes(relay.sent[0], policy=email.policy.default)
    assert mail["Subject"] == "[研发群] 数据库故障"


def test_the_spool_keeps_what_rows_name_and_young_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = spool.write("digest/oc_team/2026-12-01/1", lambda out: out.write(b"mail"))
    twin = spool.write("digest/oc_team/2026-12-01/1", lambda out: out.write(b"the same day"))
    assert twin != kept  # two digests built at once never share (or remove) one file
    spool.remove(twin)
    orphan = spool.write("om_1/a@example.com", lambda out: out.write(b"cancelled"))
    assert spool.path(kept).read_bytes() == b"mail"
    assert spool.sweep({kept}, older_than=3600) == 0  # a young file may be a row to come
    old = time.time() - 7200
    os.utime(spool.path(orphan), (old, old))
    assert spool.sweep({kept}, older_than=3600) == 1
    assert sorted(p.name for p in spool.directory.iterdir()) == [kept]

    def fails(out: BinaryIO) -> None:
        out.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        spool.write("om_2/a@example.com", fails)
    assert sorted(p.name for p in spool.directory.iterdir()) == [kept]  # no half file


def test_a_row_recalled_while_composed_keeps_no_file_and_a_lost_digest_fails_plainly(
    backend: Backend, tmp_path: Path, emulator: FeishuEmulator
) -> None:
    s = settings(tmp_path, emulator, backend)
    relay = MemoryRelay()
    relay.refuse_next = 0

    async def main() -> list[tuple[str, str | None, str | None]]:
        state = backend.state(tmp_path / "state.db", daemon=True)
        now = time.time()
        await state.write(
            partial(messages.ingest, msg=message(1, "数据库故障"), deliveries=(ONCALL,), now=now)
        )
        await state.write(partial(outbox.queue_planned, limit=10))
        [mail_id] = state.read(lambda tx: [r[0] for r in tx.execute("SELECT mail_id FROM outbox")])
        await state.write(partial(outbox.cancel_for_recall, message_id="om_1", now=now))
        composed = Prepared("subject", spool="f" * 24 + "-0123456789abcdef.eml")
        claimed = await state.write(
            partial(outbox.begin_send, mail_id=mail_id, me=state.instance, prepared=composed)
        )
        assert not claimed.done
        assert state.read(outbox.spooled) == set()  # the cancelled row names no file
        # A digest whose spool file is gone cannot be composed again here: failed, once.
        digest = Prepared("日报汇总", spool="0" * 24 + "-0123456789abcdef.eml")
        await state.write(queued_digest(digest, now=now))
        api = FeishuApi(s.feishu)
        worker = Outbox(Sources.of(s, state, api), lambda: None, transport=relay)
        task = asyncio.create_task(worker.run())
        await until(lambda: state.read(outbox.pending_count) == 0)
        worker.stop()
        await task
        rows = state.read(
            lambda tx: tx.execute("SELECT kind, status, last_error FROM outbox").fetchall()
        )
        await api.close()
        state.close()
        return sorted(tuple(r) for r in rows)

    rows = asyncio.run(main())
    assert rows[0][:2] == ("digest", "failed")
    assert rows[0][2] is not None and "spool file" in rows[0][2] and "is gone" in rows[0][2]
    assert rows[1][:2] == ("forward", "cancelled")
    assert relay.sent == []


def test_the_schedule_shows_progress_while_a_daily_digest_fetches_its_images(
    backend: Backend, tmp_path: Path, emulator: FeishuEmulator
) -> None:
    """Each image fetched is progress: a digest of many slow images must not look like
    a stalled worker (the watchdog would restart the daemon, and again)."""
    import dataclasses

    from feishu_mailbot.core.model import Image
    from feishu_mailbot.workers.schedule import Schedule
    from tests.mail.test_daily_report import png

    s = settings(
        tmp_path,
        emulator,
        backend,
        extra=REPORTS.replace("acknowledge: reaction", 'mode: scheduled\n  at: "18:00"'),
    )
    at = 1_764_583_200.0 + 3600  # 2025-12-01 19:00 in Asia/Shanghai: past the digest's time
    state = backend.state(tmp_path / "state.db", daemon=True)
    for n in range(1, 5):
        emulator.register_resource(f"img_{n}", png(), "image/png")
        report = dataclasses.replace(
            message(n, f"日报 第 {n} 份"),
            msg_type="post",
            blocks=(Text(f"日报 第 {n} 份"), Image(f"img_{n}")),
        )
        state.write_now(partial(messages.ingest, msg=report, deliveries=(), now=at - 3600))
    emulator.set_slow(0.3)  # each image: 0.3 s

    async def main() -> list[float]:
        api = FeishuApi(s.feishu)
        names = NameResolver(s, state, api, wall_clock=lambda: at)
        reporter = Reporter(Sources(s, state, api, names, lambda: at))
        schedule = Schedule(s, state, reporter, lambda: None, lambda: at)
        queued = partial(digests.for_day, chat_id="oc_team", day="2025-12-01")
        seen = await progress_while(  # from the first image asked for
            schedule, lambda: emulator.resource_requests, lambda: state.read(queued)
        )
        await api.close()
        return seen

    seen = asyncio.run(main())
    state.close()
    assert max(seen) > seen[0]  # moved on while the digest was still being built
