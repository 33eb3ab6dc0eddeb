"""Our Frame codec against the SDK's own protobuf classes: same fields, same bytes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from feishu_mailbot.feishu import frames
from feishu_mailbot.feishu.connection import load_ws_client

load_ws_client()  # puts lark_oapi.ws (and its vendored protobuf) in place
from lark_oapi.ws.pb.pbbp2_pb2 import Frame as SdkFrame  # noqa: E402


def sdk_frame(rng: random.Random) -> Any:
    f = SdkFrame()
    f.SeqID = rng.choice([0, 1, 2**32 + 5, 2**64 - 1])
    f.LogID = rng.randrange(0, 2**63)
    f.service = rng.choice([0, 1, 7, -1, -(2**31), 2**31 - 1])
    f.method = rng.choice([0, 1])
    for i in range(rng.randrange(0, 7)):
        h = f.headers.add()
        h.key = rng.choice(["type", "message_id", "sum", "seq", "trace_id", "键"])
        h.value = rng.choice(["", "event", str(i), "值" * rng.randrange(0, 300)])
    if rng.random() < 0.5:
        f.payload_encoding = rng.choice(["", "gzip"])
    if rng.random() < 0.5:
        f.payload_type = "json"
    if rng.random() < 0.8:
        f.payload = rng.randbytes(rng.choice([0, 1, 127, 128, 20000]))
    if rng.random() < 0.5:
        f.LogIDNew = "log-" + str(rng.randrange(10**9))
    return f


def test_decode_and_encode_agree_with_the_sdk() -> None:
    rng = random.Random(6)
    for _ in range(500):
        sdk = sdk_frame(rng)
        raw = sdk.SerializeToString()
        ours = frames.decode(raw)
        assert (ours.seq_id, ours.log_id, ours.service, ours.method) == (
            sdk.SeqID,
            sdk.LogID,
            sdk.service,
            sdk.method,
        )
        assert ours.headers == [(h.key, h.value) for h in sdk.headers]
        assert ours.payload == (sdk.payload if sdk.HasField("payload") else None)
        assert ours.payload_type == (sdk.payload_type if sdk.HasField("payload_type") else None)
        assert ours.log_id_new == (sdk.LogIDNew if sdk.HasField("LogIDNew") else None)
        assert frames.encode(ours) == raw


def test_an_ack_is_what_the_sdk_would_send() -> None:
    rng = random.Random(7)
    for _ in range(100):
        sdk = sdk_frame(rng)
        ours = frames.decode(sdk.SerializeToString())
        h = sdk.headers.add()
        h.key, h.value = "biz_rt", "3"
        sdk.payload = b'{"code":200}'
        ours.headers.append(("biz_rt", "3"))
        ours.payload = b'{"code":200}'
        assert frames.encode(ours) == sdk.SerializeToString()


def test_unknown_fields_are_kept() -> None:
    sdk = SdkFrame(SeqID=1, LogID=2, service=3, method=1, payload=b"x")
    extra = b"\x50\x05" + b"\x5a\x03abc" + b"\x61" + bytes(8) + b"\x6d" + bytes(4)
    raw = sdk.SerializeToString() + extra
    ours = frames.decode(raw)
    assert ours.unknown == extra
    assert frames.encode(ours) == raw
    again = SdkFrame()
    again.ParseFromString(frames.encode(ours))
    assert again.payload == b"x"


def test_header_lookup() -> None:
    f = frames.Frame(headers=[("type", "event"), ("sum", "2")])
    assert f.header("type") == "event"
    assert f.header("seq", "0") == "0"


@pytest.mark.parametrize(
    "raw",
    [
        b"\x08",  # a varint cut short
        b"\x42\x05ab",  # a payload longer than the frame
        b"\x2a\x02\x0a\x05",  # a header cut short
        b"\x0b",  # wire type 3 (groups)
        b"\x08" + b"\xff" * 11,  # an endless varint
        b"\x32\x02\xff\xfe",  # a string that is not UTF-8
    ],
)
def test_garbage_is_a_frame_error(raw: bytes) -> None:
    with pytest.raises(frames.FrameError):
        frames.decode(raw)
