"""The long connection's `Frame` (lark_oapi's pbbp2.proto) read and written directly.

lark_oapi vendors the pure-Python protobuf runtime: parsing an event frame and
serialising its ack cost ≈130 µs per event, more than everything else the SDK
does with it. The message is tiny and fixed (proto2):

    message Header { required string key = 1; required string value = 2; }
    message Frame {
      required uint64 SeqID = 1;   required uint64 LogID = 2;
      required int32 service = 3;  required int32 method = 4;
      repeated Header headers = 5;
      optional string payload_encoding = 6;  optional string payload_type = 7;
      optional bytes payload = 8;            optional string LogIDNew = 9;
    }

so it is decoded and encoded here, in ≈35 µs for both. Like the protobuf runtime,
fields are written in number order with optional ones only when present, and
unknown fields are kept and written after them, so an ack is byte-for-byte
what the SDK would have sent (tests/test_frames.py checks that against the
SDK's own classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DATA = 1  # FrameType.DATA in lark_oapi.ws.enum: events and card callbacks (0 is ping/pong)


class FrameError(ValueError):
    """The bytes are not a Frame."""


@dataclass
class Frame:
    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    payload_encoding: str | None = None
    payload_type: str | None = None
    payload: bytes | None = None
    log_id_new: str | None = None
    unknown: bytes = b""  # fields this version does not know, as they came

    def header(self, key: str, default: str = "") -> str:
        for k, v in self.headers:
            if k == key:
                return v
        return default


def decode(data: bytes) -> Frame:
    frame = Frame()
    unknown: list[bytes] = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            start = pos
            tag, pos = _varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                value, pos = _varint(data, pos)
                if number == 1:
                    frame.seq_id = value
                elif number == 2:
                    frame.log_id = value
                elif number == 3:
                    frame.service = _int32(value)
                elif number == 4:
                    frame.method = _int32(value)
                else:
                    unknown.append(data[start:pos])
            elif wire == 2:
                size, pos = _varint(data, pos)
                chunk = data[pos : pos + size]
                if len(chunk) != size:
                    raise FrameError("truncated field")
                pos += size
                if number == 5:
                    frame.headers.append(_header(chunk))
                elif number == 6:
                    frame.payload_encoding = chunk.decode("utf-8")
                elif number == 7:
                    frame.payload_type = chunk.decode("utf-8")
                elif number == 8:
                    frame.payload = chunk
                elif number == 9:
                    frame.log_id_new = chunk.decode("utf-8")
                else:
                    unknown.append(data[start:pos])
            elif wire in (1, 5):  # fixed64 / fixed32: unknown here, kept
                pos += 8 if wire == 1 else 4
                if pos > end:
                    raise FrameError("truncated field")
                unknown.append(data[start:pos])
            else:
                raise FrameError(f"wire type {wire} of field {number} is not supported")
    except (IndexError, UnicodeDecodeError) as e:
        raise FrameError(str(e)) from e
    frame.unknown = b"".join(unknown)
    return frame


def encode(frame: Frame) -> bytes:
    out = bytearray()
    out += b"\x08" + _uvarint(frame.seq_id)
    out += b"\x10" + _uvarint(frame.log_id)
    out += b"\x18" + _uvarint(frame.service & 0xFFFFFFFFFFFFFFFF)
    out += b"\x20" + _uvarint(frame.method & 0xFFFFFFFFFFFFFFFF)
    for key, value in frame.headers:
        k, v = key.encode("utf-8"), value.encode("utf-8")
        body = b"\x0a" + _uvarint(len(k)) + k + b"\x12" + _uvarint(len(v)) + v
        out += b"\x2a" + _uvarint(len(body)) + body
    for tag, text in ((b"\x32", frame.payload_encoding), (b"\x3a", frame.payload_type)):
        if text is not None:
            raw = text.encode("utf-8")
            out += tag + _uvarint(len(raw)) + raw
    if frame.payload is not None:
        out += b"\x42" + _uvarint(len(frame.payload)) + frame.payload
    if frame.log_id_new is not None:
        raw = frame.log_id_new.encode("utf-8")
        out += b"\x4a" + _uvarint(len(raw)) + raw
    out += frame.unknown
    return bytes(out)


def _header(data: bytes) -> tuple[str, str]:
    key = value = ""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        if tag & 7 != 2:
            raise FrameError("a header field is not a string")
        size, pos = _varint(data, pos)
        if pos + size > len(data):
            raise FrameError("truncated header")
        text = data[pos : pos + size].decode("utf-8")
        pos += size
        if tag >> 3 == 1:
            key = text
        elif tag >> 3 == 2:
            value = text
    return key, value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise FrameError("varint too long")


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
