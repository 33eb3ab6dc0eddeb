"""Batched rules: matches collected into digests, each in exactly one, none after a recall.

The boundaries and the mail are pure (batch.py); the simulated day runs the
shipped Batcher and the real state with an injected clock, restarts in the
middle and stays down for three hours; the last test is the real daemon under
libfaketime across an hour boundary, killed and started again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import time as day_time
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from feishu_mailbot.compose.batch import Batcher
from feishu_mailbot.compose.daily_report import Reporter
from feishu_mailbot.compose.names import NameResolver
from feishu_mailbot.compose.sources import Sources
from feishu_mailbot.config import load
from feishu_mailbot.config.settings import Batch, Settings
from feishu_mailbot.core import batch, triage
from feishu_mailbot.core.model import Image, Message, Recall, Text
from feishu_mailbot.core.retry import UNEXPECTED_ATTEMPTS
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.mail import batch as batch_mail
from feishu_mailbot.state import State, Tx, messages, outbox, subscriptions
from feishu_mailbot.workers.schedule import Schedule
from tests.compose.test_daily_report import faketime_env
from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, Bot, progress_while, write_config
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]
SH = ZoneInfo("Asia/Shanghai")
HOURLY = """\
- name: 低优先级
  keywords: [低优先级]
  batch: 1h
  to: [archive@example.com]
- name: oncall
  keywords: [故障]
  to: [oncall@example.com]
"""


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("now", "every", "due"),
    [
        ("10:37", Batch(every=3600), "10:00"),
        ("11:00", Batch(every=3600), "11:00"),
        ("00:10", Batch(every=3600), "00:00"),
        ("17:59", Batch(every=6 * 3600), "12:00"),
        ("10:44", Batch(every=900), "10:30"),
        ("18:00", Batch(at=day_time(18)), "18:00"),
        ("23:00", Batch(at=day_time(18)), "18:00"),
    ],
)
def test_boundaries_are_counted_from_local_midnight(now: str, every: Batch, due: str) -> None:
    hour, minute = map(int, now.split(":"))
    moment = datetime(2026, 12, 1, hour, minute, 7, tzinfo=SH)
    assert batch.boundary(moment, every).strftime("%H:%M") == due
    assert batch.boundary(moment, every).tzinfo is SH


def test_a_boundary_in_a_dst_gap_is_never_in_the_future() -> None:
    """Berlin skips 02:00-03:00 on 2026-03-29: `daily: "02:30"` is due once the gap is over."""
    berlin = ZoneInfo("Europe/Berlin")
    daily = Batch(at=day_time(2, 30))
    for hour, minute in ((3, 0), (3, 29), (3, 31), (12, 0)):
        now = datetime(2026, 3, 29, hour, minute, tzinfo=berlin)
        assert batch.boundary(now, daily) <= now
    assert batch.boundary(datetime(2026, 3, 29, 3, 0, tzinfo=berlin), daily).day == 28
    assert batch.boundary(datetime(2026, 3, 29, 3, 31, tzinfo=berlin), daily).day == 29
    hourly = batch.boundary(datetime(2026, 3, 29, 3, 10, tzinfo=berlin), Batch(every=3600))
    assert hourly == datetime(2026, 3, 29, 3, 0, tzinfo=berlin)


def test_a_daily_boundary_before_its_time_is_yesterdays() -> None:
    moment = datetime(2026, 12, 1, 17, 59, tzinfo=SH)
    assert batch.boundary(moment, Batch(at=day_time(18))) == datetime(2026, 11, 30, 18, tzinfo=SH)
    end = datetime(2026, 12, 1, 18, tzinfo=SH)
    assert batch.window_start(end, Batch(at=day_time(18))) == datetime(2026, 11, 30, 18, tzinfo=SH)
    assert batch.window_start(end, Batch(every=3600)) == datetime(2026, 12, 1, 17, tzinfo=SH)


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ("  batch: 7m\n", "not a batch interval"),
        ("  batch: 2m\n", "not a batch interval"),
        ("  batch: 25h\n", "not a batch interval"),
        ("  batch: hourly\n", "not a batch interval"),
        ('  batch: 1h\n  daily: "18:00"\n', "not both"),
        ("  batch: 1h\n  notify_recall: true\n", "`notify_recall` is per mail"),
        ('  daily: "18:00"\n  subject: "{preview}"\n', "`subject` is per mail"),
        ('  daily: "25:00"\n', "not a time of day"),
    ],
)
def test_bad_batching_is_a_config_error_with_its_line(
    tmp_path: Path, rule: str, problem: str
) -> None:
    rules = "- name: low\n  keywords: [x]\n  to: [a@example.com]\n" + rule
    path = write_config(tmp_path, feishu_url="http://127.0.0.1:9", smtp_port=9, rules=rules)
    with pytest.raises(load.ConfigError, match=problem) as raised:
        load.load(str(path))
    assert f"{path}:" in str(raised.value)


def test_batched_rules_collect_and_others_still_mail(tmp_path: Path) -> None:
    s = settings(tmp_path)
    msg = message(1, "低优先级：磁盘 80%，故障预警", datetime(2026, 12, 1, 10, 5, tzinfo=SH))
    accepted = triage.triage(msg, s, "ou_mailbot")
    assert isinstance(accepted, triage.Accept)
    assert accepted.batches == ("低优先级",)
    assert [d.rules for d in accepted.deliveries] == [("oncall",)]


def test_the_digest_groups_by_chat_and_thread() -> None:
    at = datetime(2026, 12, 1, 10, 0, tzinfo=SH)
    root = message(1, "低优先级：备份慢", at, chat="oc_a")
    other = message(2, "低优先级：日志多", at + timedelta(minutes=5), chat="oc_b")
    reply = message(3, "低优先级：已处理", at + timedelta(minutes=9), chat="oc_a", root=root)
    found = [(root, "张三", "研发群"), (other, "李四", "运维群"), (reply, "Bob", "研发群")]
    r = batch.build("低优先级", at, at + timedelta(hours=1), found)
    assert [(c.name, c.count) for c in r.chats] == [("研发群", 2), ("运维群", 1)]
    assert [len(t) for t in r.chats[0].threads] == [2]  # the reply joined its root
    text = batch_mail.render_text(r)
    assert "== 研发群 (2 条) ==" in text and "  ↳ 10:09 Bob" in text
    assert batch_mail.subject(r) == "[飞书汇总] 低优先级 · 2026-12-01 10:00–11:00 · 3 条"
    html = batch_mail.render_html(r, generated=at, available=set())
    assert html.index("研发群") < html.index("已处理") < html.index("运维群")


# --------------------------------------------------------------------------- a simulated day


def settings(tmp_path: Path, url: str = "http://127.0.0.1:9") -> Settings:
    return load.load(str(write_config(tmp_path, feishu_url=url, smtp_port=9, rules=HOURLY)))


def message(
    n: int, text: str, at: datetime, chat: str = "oc_team", root: Message | None = None
) -> Message:
    return Message(
        f"ev_{n}", f"om_{n}", chat, "group", "ou_alice", "user", "text",
        int(at.timestamp() * 1000), (Text(text),),
        root_id=root.message_id if root else "", parent_id=root.message_id if root else "",
    )  # fmt: skip


def batch_mails(tx: Tx) -> list[tuple[str, bytes]]:
    rows = tx.execute(  # type: ignore[attr-defined]
        "SELECT mail_id, raw FROM outbox WHERE kind = 'batch' ORDER BY created_at"
    ).fetchall()
    return [(r[0], bytes(r[1])) for r in rows]


def carried(tx: Tx) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for mail_id, message_id in tx.execute(  # type: ignore[attr-defined]
        "SELECT mail_id, message_id FROM batch_items WHERE mail_id IS NOT NULL"
    ):
        out.setdefault(message_id, []).append(mail_id)
    return out


def test_a_simulated_day_of_an_hourly_batch(tmp_path: Path, emulator: FeishuEmulator) -> None:
    """Every 10 minutes three matches and two other messages; every third match recalled
    before its digest; a restart at 12:35; down from 13:20 to 16:05."""
    s = settings(tmp_path, emulator.base_url)
    day = datetime(2026, 12, 1, 0, 0, tzinfo=SH)
    now = [day.timestamp()]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    matched: list[str] = []
    recalled: list[str] = []
    down = (day + timedelta(hours=13, minutes=20), day + timedelta(hours=16, minutes=5))
    path = tmp_path / "state" / "feishu-mailbot.db"

    def start() -> tuple[State, Batcher]:
        state = State(path, daemon=True)
        api = FeishuApi(s.feishu)
        return state, Batcher(Sources.of(s, state, api, clock))

    async def main() -> None:
        state, batcher = start()
        n = 0
        for step in range(24 * 6 + 1):
            at = day + timedelta(minutes=10 * step)
            now[0] = at.timestamp()
            if down[0] <= at < down[1]:
                continue  # the bot is off: nothing arrives, nothing is sent
            if at == day + timedelta(hours=12, minutes=35 - 5):
                state.close()
                state, batcher = start()  # a restart: nothing in memory survives
            if step < 24 * 6:
                for k in range(5):
                    n += 1
                    text = f"低优先级 #{n}：磁盘 80%" if k < 3 else f"闲聊 #{n}"
                    msg = message(n, text, at + timedelta(seconds=k))
                    accepted = triage.triage(msg, s, "ou_mailbot")
                    assert isinstance(accepted, triage.Accept)
                    await state.write(
                        partial(
                            messages.ingest,
                            msg=msg,
                            deliveries=accepted.deliveries,
                            now=now[0] + k,
                            batches=accepted.batches,
                        )
                    )
                    if accepted.batches:
                        matched.append(msg.message_id)
                    if k == 0 and n % 9 == 1:
                        await state.write(
                            partial(
                                messages.recall,
                                event=Recall(f"ev_r{n}", msg.message_id, "oc_team", 0),
                                now=now[0] + 4,
                            )
                        )
                        recalled.append(msg.message_id)
            now[0] += 30  # a schedule tick, half a minute later
            await batcher.send_due()
            if step == 30:  # the same tick again, as after a restart: nothing new
                assert await batcher.send_due() == 0
        mails = state.read(batch_mails)
        carriers = state.read(carried)
        state.close()
        return mails, carriers

    mails, carriers = asyncio.run(main())
    assert 0 < len(mails) <= 24
    assert len(mails) == 24 - 2  # down over 14:00 and 15:00: one catch-up digest at 16:00
    wanted = [m for m in matched if m not in recalled]
    assert sorted(carriers) == sorted(wanted)  # every match, recalled ones in none
    assert all(len(c) == 1 for c in carriers.values())  # each in exactly one
    bodies = {mail_id: parse(raw) for mail_id, raw in mails}
    for message_id, [mail_id] in carriers.items():
        number = message_id.removeprefix("om_")
        assert f"低优先级 #{number}：" in text_of(bodies[mail_id])
    for message_id in recalled:
        number = message_id.removeprefix("om_")
        assert not any(f"#{number}：" in text_of(b) for b in bodies.values())
    # Its span is that of what it carries: the matches of 13:00 and 13:10, then the stop.
    catch_up = [str(b["Subject"]) for b in bodies.values() if "–16:00" in str(b["Subject"])]
    assert catch_up == ["[飞书汇总] 低优先级 · 2026-12-01 13:00–16:00 · 6 条"]


TWO = """\
- name: 低优先级
  keywords: [低优先级]
  batch: 1h
  to: [archive@example.com, lisi@example.com]
"""
# Read only for the List-Unsubscribe address: nothing connects to it here.
INBOUND = "inbound:\n  imap:\n    host: 127.0.0.1\n    username: bot\n    password: x\n"


def test_a_digest_skips_who_left_its_rule_and_says_how_to_leave(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path, feishu_url="http://127.0.0.1:9", smtp_port=9, rules=TWO,
                          extra=INBOUND)  # fmt: skip
    s = load.load(str(config))
    at = datetime(2026, 12, 1, 10, 5, tzinfo=SH)
    state = State(tmp_path / "state" / "feishu-mailbot.db", daemon=True)

    async def tick(n: int, gone: list[str]) -> list[tuple[str, bytes]]:
        for address in gone:
            await state.write(partial(subscriptions.leave, rule="低优先级", address=address, now=0))
        msg = message(n, f"低优先级 #{n}", at + timedelta(hours=n))
        accepted = triage.triage(msg, s, "ou_mailbot")
        assert isinstance(accepted, triage.Accept)
        await state.write(partial(messages.ingest, msg=msg, deliveries=(), now=msg.create_time_ms
                                  / 1000, batches=accepted.batches))  # fmt: skip
        clock = lambda: (at + timedelta(hours=n + 1)).timestamp()  # noqa: E731
        await Batcher(Sources.of(s, state, FeishuApi(s.feishu), clock)).send_due()
        return state.read(batch_mails)

    ((_, raw),) = asyncio.run(tick(0, ["LiSi@example.com"]))
    digest = parse(raw)
    assert str(digest["To"]) == "archive@example.com"
    assert str(digest["List-Unsubscribe"]).startswith("<mailto:bot@example.com?subject=unsub")
    with caplog.at_level(logging.INFO):
        assert len(asyncio.run(tick(1, ["archive@example.com"]))) == 1  # no second digest
    assert "all its recipients unsubscribed; 1 matches dropped" in caplog.text
    state.close()


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def text_of(mail: EmailMessage) -> str:
    part = mail.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


# --------------------------------------------------------------------------- the daemon


def test_the_daemon_sends_a_batch_once_across_a_kill_and_a_restart(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    """Matches before 11:00 under libfaketime; killed before the boundary, started after
    it: one digest with every match but the recalled one; another restart sends nothing."""
    at = datetime.now(SH).replace(hour=10, minute=59, second=35, microsecond=0)
    emulator.run_clock_from(at)  # Feishu's create_time agrees with the daemon's clock
    bot = make_bot(rules=HOURLY).start(env=faketime_env(at))
    keep = [emulator.push_text("oc_team", "ou_alice", f"低优先级：备份慢 {n}") for n in range(2)]
    gone = emulator.push_text("oc_team", "ou_bob", "低优先级：误报")
    emulator.push_text("oc_team", "ou_bob", "闲聊")
    for pushed in (*keep, gone):
        emulator.wait_ack(pushed)
    emulator.wait_ack(emulator.push_recall(gone["event"]["message"]["message_id"], "oc_team"))
    bot.stop(signal.SIGKILL)  # no clean shutdown
    bot.start(env=faketime_env(at + timedelta(seconds=40)))  # 11:00:15
    [digest] = smtp.wait_for(1, timeout=30)
    assert str(digest["To"]) == "archive@example.com"
    assert str(digest["Subject"]).startswith("[飞书汇总] 低优先级 · ")
    assert str(digest["Subject"]).endswith("10:00–11:00 · 2 条")
    body = text_of(digest)
    assert "备份慢 0" in body and "备份慢 1" in body and "误报" not in body
    assert "闲聊" not in body
    bot.stop()
    bot.start(env=faketime_env(at + timedelta(seconds=60)))
    time.sleep(11)  # the schedule looks every 5 s: two looks, and nothing to send
    assert len(smtp.messages) == 1
    assert bot.stop() == 0


def test_waiting_matches_outlive_retention_until_carried_or_their_rule_goes(
    tmp_path: Path, emulator: FeishuEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Retention never drops a match its digest has not carried; removing the rule does,
    and says so."""
    from feishu_mailbot.state import batches, retention

    s = settings(tmp_path, emulator.base_url)
    old = datetime(2026, 10, 1, 10, 5, tzinfo=SH)
    state = State(tmp_path / "state" / "feishu-mailbot.db", daemon=True)
    for n in (1, 2):
        msg = message(n, f"低优先级 #{n}", old)
        state.write_now(
            partial(
                messages.ingest, msg=msg, deliveries=(), now=old.timestamp(), batches=["低优先级"]
            )
        )
    state.write_now(partial(batches.add, rules=["旧规则"], message_id="om_1", now=old.timestamp()))
    later = (old + timedelta(days=60)).timestamp()
    cutoffs = retention.Cutoffs(later, later, later)

    def prune_all(tx: Tx) -> int:
        total = 0
        while (done := retention.prune(tx, cutoffs, 500).rows) > 0:
            total += done
        return total

    state.write_now(prune_all)
    waiting = partial(batches.waiting, rule="低优先级", before=later, limit=10)
    assert state.read(waiting) == ["om_1", "om_2"]
    assert state.read(partial(messages.get, message_id="om_1")) is not None

    api = FeishuApi(s.feishu)
    batcher = Batcher(Sources.of(s, state, api, lambda: later))
    with caplog.at_level("WARNING", logger="feishu_mailbot.compose.batch"):
        assert asyncio.run(batcher.send_due()) == 1  # the late digest carries both
    assert (
        "rule '旧规则' is gone: 1 matches that waited for its batch digest dropped" in caplog.text
    )
    state.write_now(prune_all)
    assert state.read(partial(messages.get, message_id="om_1")) is None  # carried: it may go
    state.close()


def test_more_matches_than_a_digest_carries_go_out_in_several_at_once(
    tmp_path: Path, emulator: FeishuEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feishu_mailbot.compose import batch as batcher_module

    monkeypatch.setattr(batcher_module, "PER_DIGEST", 2)
    s = settings(tmp_path, emulator.base_url)
    at = datetime(2026, 12, 1, 10, 5, tzinfo=SH)
    state = State(tmp_path / "state" / "feishu-mailbot.db", daemon=True)
    for n in range(1, 6):
        state.write_now(
            partial(
                messages.ingest,
                msg=message(n, f"低优先级 #{n}", at),
                deliveries=(),
                now=at.timestamp() + n,
                batches=["低优先级"],
            )
        )
    api = FeishuApi(s.feishu)
    later = (at + timedelta(hours=1)).timestamp()
    batcher = Batcher(Sources.of(s, state, api, lambda: later))
    assert asyncio.run(batcher.send_due()) == 3
    assert sorted(len(v) for v in state.read(carried).values()) == [1] * 5
    subjects = [str(parse(raw)["Subject"]) for _, raw in state.read(batch_mails)]
    assert [s.rsplit(" · ", 1)[1] for s in subjects] == ["2 条", "2 条", "1 条"]
    state.close()


def test_a_rule_unbatched_sends_what_waited_and_a_clock_set_back_delays_nothing(
    tmp_path: Path, emulator: FeishuEmulator
) -> None:
    s = settings(tmp_path, emulator.base_url)
    at = datetime(2026, 12, 1, 10, 5, tzinfo=SH)
    state = State(tmp_path / "state" / "feishu-mailbot.db", daemon=True)
    stamps = {1: at.timestamp(), 2: at.timestamp() + 7 * 86400}  # 2: a clock a week ahead
    for n, stamp in stamps.items():
        state.write_now(
            partial(
                messages.ingest,
                msg=message(n, f"低优先级 #{n}", at),
                deliveries=(),
                now=stamp,
                batches=["低优先级"],
            )
        )
    api = FeishuApi(s.feishu)
    names = NameResolver(s, state, api)
    later = (at + timedelta(hours=1)).timestamp()
    assert asyncio.run(Batcher(Sources(s, state, api, names, lambda: later)).send_due()) == 1
    assert sorted(state.read(carried)) == ["om_1", "om_2"]  # the one from "next week" too

    state.write_now(
        partial(
            messages.ingest,
            msg=message(3, "低优先级 #3", at),
            deliveries=(),
            now=later,
            batches=["低优先级"],
        )
    )
    unbatched = dataclasses.replace(
        s, rules=tuple(dataclasses.replace(r, batch=None) for r in s.rules)
    )
    batcher = Batcher(Sources(unbatched, state, api, names, lambda: later + 60))
    assert asyncio.run(batcher.send_due()) == 1  # at once, not at a boundary
    assert sorted(state.read(carried)) == ["om_1", "om_2", "om_3"]
    state.close()


def test_an_unreadable_match_is_left_out_and_the_digest_goes(
    tmp_path: Path, emulator: FeishuEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A row that cannot be read back (corrupted on disk) must not hold up the rule."""
    import sqlite3

    s = settings(tmp_path, emulator.base_url)
    at = datetime(2026, 12, 1, 10, 5, tzinfo=SH)
    path = tmp_path / "state" / "feishu-mailbot.db"
    state = State(path, daemon=True)
    for n in (1, 2):
        state.write_now(
            partial(
                messages.ingest,
                msg=message(n, f"低优先级 #{n}", at),
                deliveries=(),
                now=at.timestamp() + n,
                batches=["低优先级"],
            )
        )
    db = sqlite3.connect(path)
    db.execute("UPDATE messages SET body = '{not json' WHERE message_id = 'om_1'")
    db.commit()
    db.close()
    api = FeishuApi(s.feishu)
    later = (at + timedelta(hours=1)).timestamp()
    batcher = Batcher(Sources.of(s, state, api, lambda: later))
    with caplog.at_level("ERROR", logger="feishu_mailbot.compose.batch"):
        assert asyncio.run(batcher.send_due()) == 1
    assert "a batched match cannot be read, left out" in caplog.text
    [(_, raw)] = state.read(batch_mails)
    assert "低优先级 #2" in text_of(parse(raw)) and "低优先级 #1" not in text_of(parse(raw))
    assert asyncio.run(batcher.send_due()) == 0  # carried: not tried again and again
    state.close()


def test_what_an_unbatched_rule_left_waiting_is_looked_for_at_every_tick(
    tmp_path: Path, emulator: FeishuEmulator
) -> None:
    """A match the last digest could not take yet (received the very second it was built,
    or one recalled meanwhile) goes with the next look, not at the next restart."""
    s = settings(tmp_path, emulator.base_url)
    unbatched = dataclasses.replace(
        s, rules=tuple(dataclasses.replace(r, batch=None) for r in s.rules)
    )
    at = datetime(2026, 12, 1, 10, 5, tzinfo=SH).timestamp()
    now = [at]
    state = State(tmp_path / "state" / "feishu-mailbot.db", daemon=True)
    for n in (1, 2):
        state.write_now(
            partial(
                messages.ingest,
                msg=message(n, f"低优先级 #{n}", datetime.fromtimestamp(at, SH)),
                deliveries=(),
                now=at - 10 + 10 * (n - 1),  # 2: stamped the second the digest is built
                batches=["低优先级"],
            )
        )
    api = FeishuApi(s.feishu)
    batcher = Batcher(Sources.of(unbatched, state, api, lambda: now[0]))

    async def main() -> tuple[int, int]:
        first = await batcher.send_due()
        now[0] += 5  # the schedule's next look
        return first, await batcher.send_due()

    assert asyncio.run(main()) == (1, 1)
    digests = state.read(carried)
    assert sorted(digests) == ["om_1", "om_2"] and digests["om_1"] != digests["om_2"]
    state.close()


def test_the_schedule_shows_progress_while_a_slow_digest_is_built(
    tmp_path: Path, emulator: FeishuEmulator
) -> None:
    """Every match read is progress: a digest slower than worker_stall_after (Feishu slow
    to name its senders) must not look like a stalled worker, or the watchdog restarts
    the daemon, and the rebuilt digest stalls again."""
    s = settings(tmp_path, emulator.base_url)
    at = datetime(2026, 12, 1, 10, 5, tzinfo=SH)
    later = (at + timedelta(hours=1)).timestamp()
    state = State(tmp_path / "state" / "feishu-mailbot.db", daemon=True)
    for n in range(1, 5):
        emulator.register_user(f"ou_member{n}", f"成员{n}")
        msg = dataclasses.replace(message(n, f"低优先级 #{n}", at), sender_open_id=f"ou_member{n}")
        state.write_now(
            partial(
                messages.ingest, msg=msg, deliveries=(), now=at.timestamp() + n,
                batches=["低优先级"],
            )
        )  # fmt: skip
    emulator.set_slow(0.3)  # each name: 0.3 s

    async def main() -> list[float]:
        api = FeishuApi(s.feishu)
        names = NameResolver(s, state, api, wall_clock=lambda: later)
        batcher = Batcher(Sources(s, state, api, names, lambda: later))
        reporter = Reporter(Sources(s, state, api, names, lambda: later))
        schedule = Schedule(s, state, reporter, lambda: None, lambda: later, batcher)
        first = "/open-apis/contact/v3/users/ou_member1"  # the round is under way
        seen = await progress_while(
            schedule, lambda: emulator.rest_calls[first], lambda: state.read(batch_mails)
        )
        await api.close()
        return seen

    seen = asyncio.run(main())
    state.close()
    assert max(seen) > seen[0]  # moved on while the digest was still being built


def test_digests_with_images_ask_the_relay_its_size_once_an_hour(
    tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    """Each digest with images needs the relay's SIZE; a quarter-hourly batch must not
    log in for it 96 times a day."""
    from tests.mail.test_daily_report import png

    s = load.load(
        str(write_config(tmp_path, feishu_url=emulator.base_url, smtp_port=smtp.port,
                         rules=HOURLY))
    )  # fmt: skip
    emulator.register_resource("img_shot", png(), "image/png")
    at = datetime(2026, 12, 1, 10, 5, tzinfo=SH)
    now = [(at + timedelta(hours=1)).timestamp()]
    state = State(tmp_path / "state" / "feishu-mailbot.db", daemon=True)
    api = FeishuApi(s.feishu)
    batcher = Batcher(Sources.of(s, state, api, lambda: now[0]))

    async def main() -> list[int]:
        sent = []
        for hour in range(3):
            msg = dataclasses.replace(
                message(hour, f"低优先级 截图 {hour}", at + timedelta(hours=hour)),
                blocks=(Text(f"低优先级 截图 {hour}"), Image("img_shot")),
            )
            stamp = (at + timedelta(hours=hour)).timestamp()
            await state.write(
                partial(messages.ingest, msg=msg, deliveries=(), now=stamp, batches=["低优先级"])
            )
            now[0] = stamp + 3600
            sent.append(await batcher.send_due())
        await api.close()
        return sent

    assert asyncio.run(main()) == [1, 1, 1]
    mails = [parse(raw) for _, raw in state.read(batch_mails)]
    assert all(any(p.get_content_type() == "image/png" for p in m.walk()) for m in mails)
    assert smtp.connections == 1  # asked once, kept for the hour
    state.close()


def test_a_digest_whose_composition_keeps_raising_fails_like_a_mail(
    tmp_path: Path, emulator: FeishuEmulator
) -> None:
    """A match stamped in the year 33658 (Feishu sent a create_time no mail can carry):
    the digest raises each tick, then is recorded failed with its matches, visible in
    `queue --failed`; `retry` gives the matches back and the digest is composed anew,
    without a match recalled while the failed digest held it."""
    s = settings(tmp_path, emulator.base_url)
    at = datetime(2026, 12, 1, 10, 5, tzinfo=SH)
    state = State(tmp_path / "state" / "feishu-mailbot.db", daemon=True)
    poison = dataclasses.replace(message(1, "低优先级 #1", at), create_time_ms=999999999999999)
    for msg in (poison, message(2, "低优先级 #2", at), message(3, "低优先级 #3 撤回", at)):
        state.write_now(
            partial(
                messages.ingest, msg=msg, deliveries=(), now=at.timestamp(), batches=["低优先级"]
            )
        )
    api = FeishuApi(s.feishu)
    later = (at + timedelta(hours=1)).timestamp()
    batcher = Batcher(Sources.of(s, state, api, lambda: later))
    for _ in range(UNEXPECTED_ATTEMPTS - 1):
        with pytest.raises(ValueError):  # the schedule logs it and tries at the next tick
            asyncio.run(batcher.send_due())
    asyncio.run(batcher.send_due())  # the last try: recorded failed, no longer raised
    assert asyncio.run(batcher.send_due()) == 0  # and no longer tried at every tick
    [failed] = state.read(partial(outbox.queued, statuses=("failed",)))
    assert failed.kind == "batch" and "ValueError" in (failed.last_error or "")
    assert state.read(outbox.counts)["failed"] == 1  # `status` says so
    recall = Recall("ev_r3", "om_3", "oc_team", 0)
    state.write_now(partial(messages.recall, event=recall, now=later))
    state.close()

    config_path = str(tmp_path / "feishu-mailbot.yaml")
    retried = subprocess.run(
        [sys.executable, "-m", "feishu_mailbot", "--config", config_path, "retry", "--all-failed"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert retried.returncode == 0, retried.stderr
    assert f"mail {failed.id}: its 2 matches go into a new batch digest" in retried.stdout
    state = State(tmp_path / "state" / "feishu-mailbot.db", daemon=True)
    assert state.read(partial(outbox.queued, statuses=("failed",))) == []
    state.write_now(lambda tx: tx.execute("DELETE FROM batch_items WHERE message_id = 'om_1'"))
    batcher = Batcher(Sources.of(s, state, api, lambda: later))
    assert asyncio.run(batcher.send_due()) == 1  # without the poison, composed and queued
    [(_, raw)] = state.read(batch_mails)
    assert "低优先级 #2" in text_of(parse(raw)) and "撤回" not in text_of(parse(raw))
    state.close()
