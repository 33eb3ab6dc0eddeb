"""Rule matching, delivery planning and subject templates."""

from __future__ import annotations

import pytest
import regex

from feishu_mailbot.config.settings import Rule
from feishu_mailbot.core.model import Delivery, Message, Text
from feishu_mailbot.core.rules import match, plan
from feishu_mailbot.core.subjects import render_subject, validate_subject_template


def msg(text: str, chat_id: str = "oc_a") -> Message:
    return Message(
        event_id="ev",
        message_id="om",
        chat_id=chat_id,
        chat_type="group",
        sender_open_id="ou",
        sender_type="user",
        msg_type="text",
        create_time_ms=0,
        blocks=(Text(text),),
    )


def test_keyword_is_width_and_case_insensitive() -> None:
    rule = Rule(name="urgent", to=("a@x.org",), keywords=("urgent",))
    assert match(rule, msg("ＵＲＧＥＮＴ：服务挂了"))
    assert match(rule, msg("this is Urgent"))
    assert not match(rule, msg("urgency"))
    full_width_keyword = Rule(name="k", to=("a@x.org",), keywords=("ＯＮＣＡＬＬ",))
    assert match(full_width_keyword, msg("ping oncall please"))


def test_chinese_keywords_any_of() -> None:
    rule = Rule(name="oncall", to=("a@x.org",), keywords=("故障", "紧急"))
    assert match(rule, msg("数据库紧急维护"))
    assert match(rule, msg("出现故障"))
    assert not match(rule, msg("一切正常"))


def test_regex_searches_text() -> None:
    rule = Rule(name="ticket", to=("a@x.org",), regex=regex.compile(r"INC-\d{4}"))
    assert match(rule, msg("see INC-1234 now"))
    assert not match(rule, msg("see INC-12"))


def test_keywords_or_regex() -> None:
    rule = Rule(name="r", to=("a@x.org",), keywords=("故障",), regex=regex.compile(r"^P[01]\b"))
    assert match(rule, msg("P0 数据库"))
    assert match(rule, msg("有故障"))
    assert not match(rule, msg("P2 小问题"))


def test_chat_scope() -> None:
    rule = Rule(name="r", to=("a@x.org",), keywords=("x",), chats=("oc_a",))
    assert match(rule, msg("x", chat_id="oc_a"))
    assert not match(rule, msg("x", chat_id="oc_b"))
    anywhere = Rule(name="r", to=("a@x.org",), keywords=("x",))
    assert match(anywhere, msg("x", chat_id="oc_b"))


def test_rule_without_filters_matches_everything_in_scope() -> None:
    archive = Rule(name="archive", to=("arch@x.org",), chats=("oc_a",))
    assert match(archive, msg("anything"))
    assert not match(archive, msg("anything", chat_id="oc_b"))


def test_two_rules_same_recipients_give_one_delivery() -> None:
    rules = [
        Rule(name="outage", to=("ops@x.org", "Boss@x.org"), keywords=("故障",), confirm=True),
        Rule(
            name="urgent",
            to=("boss@x.org", "ops@x.org"),
            keywords=("紧急",),
            subject="second {preview}",
            notify_recall=True,
        ),
    ]
    result = plan(rules, msg("紧急故障"))
    assert result == (
        Delivery(
            recipients=("Boss@x.org", "ops@x.org"),
            rules=("outage", "urgent"),
            subject_template=rules[0].subject,
            confirm=True,
            notify_recall=True,
        ),
    )


def test_overlapping_recipients_each_get_one_mail() -> None:
    rules = [
        Rule(name="r1", to=("a@x.org", "b@x.org"), keywords=("x",)),
        Rule(name="r2", to=("B@X.org", "c@x.org"), keywords=("x",), subject="r2 {preview}"),
        Rule(name="r3", to=("d@x.org",), keywords=("nomatch",)),
        Rule(name="r4", to=("a@x.org", "a@x.org"), keywords=("x",), confirm=True),
    ]
    result = plan(rules, msg("x"))
    everyone = [addr.casefold() for d in result for addr in d.recipients]
    assert sorted(everyone) == ["a@x.org", "b@x.org", "c@x.org"]
    assert len(everyone) == len(set(everyone))
    by_rules = {d.rules: d for d in result}
    assert by_rules[("r1", "r2")].recipients == ("b@x.org",)
    assert by_rules[("r1", "r4")].recipients == ("a@x.org",)
    assert by_rules[("r1", "r4")].confirm is True
    assert by_rules[("r2",)].recipients == ("c@x.org",)
    assert by_rules[("r2",)].subject_template == "r2 {preview}"
    # Deterministic order: by rule positions.
    assert [d.rules for d in result] == [("r1", "r2"), ("r1", "r4"), ("r2",)]
    assert plan(rules, msg("x")) == result


def test_no_match_no_delivery() -> None:
    rules = [Rule(name="r", to=("a@x.org",), keywords=("x",))]
    assert plan(rules, msg("y")) == ()


FIELDS = {
    "chat_name": "研发群",
    "sender_name": "张三",
    "preview": "服务故障",
    "rule": "oncall",
    "msg_type": "text",
    "date": "2024-05-01",
}


def test_render_subject() -> None:
    assert render_subject("[{chat_name}] {sender_name}: {preview}", **FIELDS) == (
        "[研发群] 张三: 服务故障"
    )
    assert render_subject("{rule}/{msg_type}/{date}", **FIELDS) == "oncall/text/2024-05-01"
    assert render_subject("{preview:.2}", **FIELDS) == "服务"


def test_render_subject_leaves_unknown_fields_and_bad_braces() -> None:
    assert render_subject("{nope} {chat_name}", **FIELDS) == "{nope} 研发群"
    assert render_subject("{chat_name.x} {0}", **FIELDS) == "{chat_name.x} {0}"
    assert render_subject("{{literal}} {chat_name}", **FIELDS) == "{literal} 研发群"
    assert render_subject("broken { brace", **FIELDS) == "broken { brace"
    assert render_subject("{chat_name:%%bad}", **FIELDS) == "{chat_name:%%bad}"


def test_render_subject_flattens_control_chars_and_clips() -> None:
    fields = dict(FIELDS, chat_name="群\r\nBcc: evil@x.org\x00\x1b")
    subject = render_subject("[{chat_name}] {preview}", **fields)
    assert subject == "[群 Bcc: evil@x.org ] 服务故障"
    assert "\r" not in subject and "\n" not in subject
    long = render_subject("{preview}", **dict(FIELDS, preview="长" * 500))
    assert len(long) == 200


@pytest.mark.parametrize(
    "template",
    ["[{chat_name}] {sender_name}: {preview}", "{rule} {msg_type} {date}", "{{x}} {preview:.20}"],
)
def test_validate_accepts(template: str) -> None:
    assert validate_subject_template(template) is None


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{chat}", "unknown placeholder {chat}"),
        ("{}", "empty placeholder"),
        ("{chat_name", "bad braces"),
        ("}", "bad braces"),
        ("{chat_name.upper}", "unknown placeholder"),
        ("{preview!r}", "conversion"),
        ("{preview:%%}", "bad format"),
    ],
)
def test_validate_rejects(template: str, fragment: str) -> None:
    error = validate_subject_template(template)
    assert error is not None and fragment in error


def test_a_regex_out_of_time_is_no_match_and_named() -> None:
    evil = Rule(name="evil", to=("a@x.org",), regex=regex.compile(r"(x+x+)+y"))
    fine = Rule(name="fine", to=("b@x.org",), keywords=("x",))
    slow: set[str] = set()
    [delivery] = plan([evil, fine], msg("x" * 5000), slow)
    assert delivery.rules == ("fine",)
    assert slow == {"evil"}
    assert not match(evil, msg("x" * 5000))  # without a set to tell, just no match


def test_an_address_that_left_a_rule_is_planned_only_for_the_rules_it_keeps() -> None:
    rules = [
        Rule(name="oncall", to=("Li@x.org", "a@x.org"), keywords=("故障",)),
        Rule(name="db", to=("li@x.org",), keywords=("故障",)),
    ]
    left = frozenset({("oncall", "li@x.org")})
    assert plan(rules, msg("数据库故障"), left=left) == (
        Delivery(("a@x.org",), ("oncall",), rules[0].subject, False, False),
        Delivery(("li@x.org",), ("db",), rules[1].subject, False, False),
    )
    everyone = frozenset({("oncall", "li@x.org"), ("oncall", "a@x.org"), ("db", "li@x.org")})
    assert plan(rules, msg("数据库故障"), left=everyone) == ()
