"""Unit tests of the Sans-I/O protocol layer: parser, connection state, encoders, headers,
subject validation.

No sockets and no threads: everything here runs in milliseconds (hypothesis included).
"""

from __future__ import annotations

import json
import re
from typing import Any, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telestion_sync import protocol as p
from telestion_sync.errors import (
    AuthenticationError,
    BadSubjectError,
    Error,
    PermissionViolationError,
    ProtocolError,
    WebSocketError,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INFO_LINE = b'INFO {"server_id":"S1","version":"2.15.1","max_payload":1048576,"headers":true}\r\n'
INFO_EVENT = (
    p.INFO,
    {"server_id": "S1", "version": "2.15.1", "max_payload": 1048576, "headers": True},
)


def feed_all(parser: p.Parser, chunks: Sequence[bytes]) -> List[p.Event]:
    events: List[p.Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def parse_whole(data: bytes) -> List[p.Event]:
    return p.Parser().feed(data)


def parse_bytewise(data: bytes) -> List[p.Event]:
    return feed_all(p.Parser(), [data[i : i + 1] for i in range(len(data))])


# --- parser: every event kind -----------------------------------------------------------------


def test_info() -> None:
    assert parse_whole(INFO_LINE) == [INFO_EVENT]


def test_info_event_is_a_dict_of_the_json() -> None:
    (event,) = parse_whole(b'INFO {"a":[1,2],"b":{"c":null}}\r\n')
    assert event[0] == p.INFO
    assert event[1] == {"a": [1, 2], "b": {"c": None}}


def test_msg_without_reply() -> None:
    assert parse_whole(b"MSG foo.bar 9 5\r\nhello\r\n") == [(p.MSG, b"foo.bar", 9, None, b"hello", None)]


def test_msg_with_reply() -> None:
    assert parse_whole(b"MSG foo 1 _INBOX.abc.1 2\r\nhi\r\n") == [
        (p.MSG, b"foo", 1, b"_INBOX.abc.1", b"hi", None)
    ]


def test_hmsg_without_reply() -> None:
    hdr = b"NATS/1.0\r\nA: b\r\n\r\n"
    frame = b"HMSG foo 3 %d %d\r\n%shi\r\n" % (len(hdr), len(hdr) + 2, hdr)
    assert parse_whole(frame) == [(p.HMSG, b"foo", 3, None, b"hi", hdr)]


def test_hmsg_with_reply() -> None:
    hdr = b"NATS/1.0\r\nA: b\r\n\r\n"
    frame = b"HMSG foo 3 rep.ly %d %d\r\n%shi\r\n" % (len(hdr), len(hdr) + 2, hdr)
    assert parse_whole(frame) == [(p.HMSG, b"foo", 3, b"rep.ly", b"hi", hdr)]


def test_hmsg_status_only_no_payload() -> None:
    # What the server sends for "no responders": a status line, no payload.
    hdr = b"NATS/1.0 503\r\n\r\n"
    frame = b"HMSG _INBOX.x.1 4 %d %d\r\n%s\r\n" % (len(hdr), len(hdr), hdr)
    (event,) = parse_whole(frame)
    assert event == (p.HMSG, b"_INBOX.x.1", 4, None, b"", hdr)
    assert p.parse_headers(event[5]) == (503, "", {})


def test_ping_pong_ok() -> None:
    assert parse_whole(b"PING\r\nPONG\r\n+OK\r\n") == [(p.PING,), (p.PONG,), (p.OK,)]


@pytest.mark.parametrize(
    "line, text",
    [
        (b"-ERR 'Authorization Violation'", "Authorization Violation"),
        (
            b"-ERR 'Permissions Violation for Publish to \"foo\"'",
            'Permissions Violation for Publish to "foo"',
        ),
        (b"-ERR 'Unknown Protocol Operation'  ", "Unknown Protocol Operation"),
        (b"-ERR no quotes here", "no quotes here"),
        (b"-ERR ''", ""),
        (b"-ERR", ""),
        (b"-ERR 'x", "'x"),  # unbalanced quote: left alone
        (b"-err 'lower case'", "lower case"),
        (b"-ERR\t'tab'", "tab"),
    ],
)
def test_err_text_without_quotes(line: bytes, text: str) -> None:
    assert parse_whole(line + b"\r\n") == [(p.ERR, text)]


def test_err_with_invalid_utf8_is_replaced_not_an_exception() -> None:
    ((kind, text),) = parse_whole(b"-ERR '\xff\xfe'\r\n")
    assert kind == p.ERR
    assert "\ufffd" in text


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"ping\r\n", [(p.PING,)]),
        (b"Pong\r\n", [(p.PONG,)]),
        (b"+ok\r\n", [(p.OK,)]),
        (b"info {}\r\n", [(p.INFO, {})]),
        (b"INFO\t{}\r\n", [(p.INFO, {})]),
        (b"msg foo 1 2\r\nhi\r\n", [(p.MSG, b"foo", 1, None, b"hi", None)]),
        (b"MSG\tfoo\t1\t2\r\nhi\r\n", [(p.MSG, b"foo", 1, None, b"hi", None)]),
        (b"msg\tfoo\t1\trep\t2\r\nhi\r\n", [(p.MSG, b"foo", 1, b"rep", b"hi", None)]),
        (b"MSG foo  1   2\r\nhi\r\n", [(p.MSG, b"foo", 1, None, b"hi", None)]),
        (
            b"hmsg foo 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
            [(p.HMSG, b"foo", 1, None, b"hi", b"NATS/1.0\r\n\r\n")],
        ),
        (
            b"HMSG\tfoo\t1\tr\t12\t14\r\nNATS/1.0\r\n\r\nhi\r\n",
            [(p.HMSG, b"foo", 1, b"r", b"hi", b"NATS/1.0\r\n\r\n")],
        ),
    ],
)
def test_lower_case_ops_and_tabs(data: bytes, expected: List[p.Event]) -> None:
    assert parse_whole(data) == expected
    assert parse_bytewise(data) == expected


def test_lower_case_frames_between_others_keep_order() -> None:
    data = b"PING\r\nmsg a 1 1\r\nx\r\nMSG b 2 1\r\ny\r\nhmsg c 3 12 13\r\nNATS/1.0\r\n\r\nz\r\npong\r\n"
    expected = [
        (p.PING,),
        (p.MSG, b"a", 1, None, b"x", None),
        (p.MSG, b"b", 2, None, b"y", None),
        (p.HMSG, b"c", 3, None, b"z", b"NATS/1.0\r\n\r\n"),
        (p.PONG,),
    ]
    assert parse_whole(data) == expected
    assert parse_bytewise(data) == expected


def test_payload_containing_crlf_and_protocol_lookalikes() -> None:
    payload = b"\r\nPING\r\nMSG x 1 2\r\n\r\n-ERR 'no'\r\n"
    data = b"MSG foo 1 %d\r\n%s\r\nPONG\r\n" % (len(payload), payload)
    expected = [(p.MSG, b"foo", 1, None, payload, None), (p.PONG,)]
    assert parse_whole(data) == expected
    assert parse_bytewise(data) == expected


def test_payload_that_is_only_crlf() -> None:
    assert parse_whole(b"MSG foo 1 2\r\n\r\n\r\n") == [(p.MSG, b"foo", 1, None, b"\r\n", None)]


def test_zero_length_payloads() -> None:
    data = b"MSG foo 1 0\r\n\r\nMSG foo 1 r 0\r\n\r\nHMSG foo 2 12 12\r\nNATS/1.0\r\n\r\n\r\n"
    expected = [
        (p.MSG, b"foo", 1, None, b"", None),
        (p.MSG, b"foo", 1, b"r", b"", None),
        (p.HMSG, b"foo", 2, None, b"", b"NATS/1.0\r\n\r\n"),
    ]
    assert parse_whole(data) == expected
    assert parse_bytewise(data) == expected


def test_hmsg_zero_header_size() -> None:
    assert parse_whole(b"HMSG foo 1 0 2\r\nhi\r\n") == [(p.HMSG, b"foo", 1, None, b"hi", b"")]


def test_several_frames_in_one_feed_and_events_in_order() -> None:
    data = INFO_LINE + b"PING\r\nMSG a 1 1\r\n1\r\n+OK\r\nMSG b 2 1\r\n2\r\n-ERR 'x'\r\nPONG\r\n"
    assert parse_whole(data) == [
        INFO_EVENT,
        (p.PING,),
        (p.MSG, b"a", 1, None, b"1", None),
        (p.OK,),
        (p.MSG, b"b", 2, None, b"2", None),
        (p.ERR, "x"),
        (p.PONG,),
    ]


def test_feed_empty_bytes() -> None:
    parser = p.Parser()
    assert parser.feed(b"") == []
    assert parser.feed(b"PI") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"NG\r\n") == [(p.PING,)]


def test_crlf_split_between_chunks() -> None:
    parser = p.Parser()
    assert parser.feed(b"PING\r") == []
    assert parser.feed(b"\nPONG\r") == [(p.PING,)]
    assert parser.feed(b"\n") == [(p.PONG,)]


def test_big_payload_in_pieces() -> None:
    payload = bytes(range(256)) * 400  # 100 KiB, contains CRLF pairs
    data = b"MSG big 1 %d\r\n%s\r\n" % (len(payload), payload)
    parser = p.Parser()
    events = feed_all(parser, [data[i : i + 4096] for i in range(0, len(data), 4096)])
    assert events == [(p.MSG, b"big", 1, None, payload, None)]
    assert parser.bytes_needed == 0


# --- bytes_needed and reset -----------------------------------------------------------------


def test_bytes_needed_counts_down_over_a_partial_payload() -> None:
    parser = p.Parser()
    assert parser.bytes_needed == 0
    assert parser.feed(b"MSG a 1 5\r\nab") == []
    assert parser.bytes_needed == 3 + 2  # rest of the payload and its CRLF
    assert parser.feed(b"c") == []
    assert parser.bytes_needed == 4
    assert parser.feed(b"de\r") == []
    assert parser.bytes_needed == 1
    assert parser.feed(b"\n") == [(p.MSG, b"a", 1, None, b"abcde", None)]
    assert parser.bytes_needed == 0


def test_bytes_needed_after_control_line_only() -> None:
    parser = p.Parser()
    assert parser.feed(b"PING\r\nHMSG a 1 r 12 20\r\n") == [(p.PING,)]
    assert parser.bytes_needed == 22


def test_bytes_needed_is_zero_for_a_partial_control_line() -> None:
    parser = p.Parser()
    assert parser.feed(b"MSG a 1 ") == []
    assert parser.bytes_needed == 0


def test_reset_forgets_a_partial_frame() -> None:
    parser = p.Parser()
    assert parser.feed(b"MSG a 1 100\r\nxyz") == []
    assert parser.bytes_needed > 0
    parser.reset()
    assert parser.bytes_needed == 0
    assert parser.feed(b"PING\r\n") == [(p.PING,)]


def test_reset_forgets_a_partial_control_line() -> None:
    parser = p.Parser()
    assert parser.feed(b"MSG a 1") == []
    parser.reset()
    assert parser.feed(INFO_LINE) == [INFO_EVENT]


# --- hypothesis: any split of a valid stream parses like the whole ---------------------------

# Text for header values and -ERR messages: anything but CR/LF (and surrogates), mostly below
# U+3000 to keep generation cheap while still covering non-ASCII UTF-8.
_no_crlf_chars = st.characters(
    blacklist_categories=("Cs",), blacklist_characters="\r\n", max_codepoint=0x3000
)
_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-$*>", min_size=1, max_size=8
)
_subject = st.lists(_token, min_size=1, max_size=4).map(".".join).map(str.encode)
_sid = st.integers(min_value=1, max_value=2**63)
_reply = st.none() | _subject
_payload = st.one_of(
    st.binary(max_size=64),
    st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b"MSG ", b"PING\r\n", b"x", b"\x00"]), max_size=8).map(
        b"".join
    ),
)
_json_scalar = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10)
_info = st.dictionaries(st.text(max_size=10), _json_scalar | st.lists(_json_scalar, max_size=3), max_size=5)
_hdr_key = st.text(alphabet="ABCXYZabcxyz-_0189", min_size=1, max_size=10)
_hdr_val = st.text(alphabet=_no_crlf_chars, max_size=12)
_status = st.sampled_from(["", " 503", " 408 Request Timeout", " 100 Idle Heartbeat"])


def _op(draw: Any, name: str) -> bytes:
    """The op name as the server may spell it (upper case normally, lower case is legal)."""
    return (name.lower() if draw(st.booleans()) else name).encode()


@st.composite
def frames(draw: Any) -> Tuple[bytes, p.Event]:
    kind = draw(st.sampled_from(["INFO", "MSG", "HMSG", "PING", "PONG", "+OK", "-ERR"]))
    sep = draw(st.sampled_from([b" ", b"\t"]))
    if kind == "MSG":
        subject, sid, reply, payload = draw(_subject), draw(_sid), draw(_reply), draw(_payload)
        args = [subject, b"%d" % sid] + ([reply] if reply else []) + [b"%d" % len(payload)]
        frame = _op(draw, "MSG") + sep + sep.join(args) + b"\r\n" + payload + b"\r\n"
        return frame, (p.MSG, subject, sid, reply, payload, None)
    if kind == "HMSG":
        subject, sid, reply, payload = draw(_subject), draw(_sid), draw(_reply), draw(_payload)
        headers = draw(st.dictionaries(_hdr_key, _hdr_val, max_size=3))
        block = p.encode_headers(headers)
        status = draw(_status)
        if status:
            block = block.replace(b"NATS/1.0", b"NATS/1.0" + status.encode(), 1)
        sizes = [b"%d" % len(block), b"%d" % (len(block) + len(payload))]
        args = [subject, b"%d" % sid] + ([reply] if reply else []) + sizes
        frame = _op(draw, "HMSG") + sep + sep.join(args) + b"\r\n" + block + payload + b"\r\n"
        return frame, (p.HMSG, subject, sid, reply, payload, block)
    if kind == "INFO":
        info = draw(_info)
        return _op(draw, "INFO") + sep + json.dumps(info).encode() + b"\r\n", (p.INFO, info)
    if kind == "-ERR":
        text = draw(st.text(alphabet=_no_crlf_chars, max_size=20))
        return _op(draw, "-ERR") + sep + b"'" + text.encode() + b"'\r\n", (p.ERR, text)
    simple = {"PING": (p.PING,), "PONG": (p.PONG,), "+OK": (p.OK,)}[kind]
    return _op(draw, kind) + b"\r\n", simple


@st.composite
def streams(draw: Any) -> Tuple[bytes, List[p.Event]]:
    pairs = draw(st.lists(frames(), min_size=1, max_size=8))
    return b"".join(f for f, _ in pairs), [e for _, e in pairs]


@st.composite
def splits(draw: Any, data: bytes) -> List[bytes]:
    if not data:
        return [data]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=min(len(data), 40))))
    chunks, last = [], 0
    for cut in cuts + [len(data)]:
        chunks.append(data[last:cut])  # empty chunks included on purpose
        last = cut
    return chunks


@FUZZ
@given(stream=streams(), data=st.data())
def test_fuzz_any_split_parses_like_whole(stream: Tuple[bytes, List[p.Event]], data: Any) -> None:
    raw, expected = stream
    assert parse_whole(raw) == expected
    # arbitrary cut points (empty chunks included)
    chunks = data.draw(splits(raw))
    assert b"".join(chunks) == raw
    parser = p.Parser()
    assert feed_all(parser, chunks) == expected
    assert parser.bytes_needed == 0
    # fixed chunk sizes, 1-byte chunks included
    size = data.draw(st.integers(1, 7))
    assert feed_all(p.Parser(), [raw[i : i + size] for i in range(0, len(raw), size)]) == expected
    # the header blocks delivered are readable
    for event in expected:
        if event[0] == p.HMSG:
            status, _desc, _headers = p.parse_headers(event[5])
            assert status in (None, 503, 408, 100)


def test_whole_frames_fed_byte_by_byte() -> None:
    hdr = p.encode_headers({"Content-Type": "application/cbor", "X": ["1", "2"]})
    raw = (
        INFO_LINE
        + b"MSG a.b 1 r 4\r\n\r\n\r\n\r\n"
        + b"HMSG c 2 %d %d\r\n%sPAY\r\n" % (len(hdr), len(hdr) + 3, hdr)
        + b"-ERR 'x'\r\nPING\r\n"
    )
    assert (
        parse_bytewise(raw)
        == parse_whole(raw)
        == [
            INFO_EVENT,
            (p.MSG, b"a.b", 1, b"r", b"\r\n\r\n", None),
            (p.HMSG, b"c", 2, None, b"PAY", hdr),
            (p.ERR, "x"),
            (p.PING,),
        ]
    )


# --- hypothesis: garbage only ever raises ProtocolError ------------------------------------

_fragments = st.sampled_from(
    [
        b"MSG ",
        b"HMSG ",
        b"msg\t",
        b"hmsg ",
        b"INFO ",
        b"info ",
        b"PING",
        b"PONG",
        b"+OK",
        b"-ERR ",
        b"\r\n",
        b"\r",
        b"\n",
        b" ",
        b"\t",
        b"-1",
        b"0",
        b"1",
        b"5",
        b"99",
        b"99999999999999999999",
        b"foo",
        b"{",
        b"}",
        b"[",
        b'"',
        b"'",
        b"NATS/1.0",
        b"\x00",
        b"\xff",
        b"1_0",
        b"+3",
    ]
)
_garbage = st.one_of(st.binary(max_size=200), st.lists(_fragments, max_size=40).map(b"".join))


def _feed_garbage(parser: p.Parser, chunks: Sequence[bytes]) -> None:
    for chunk in chunks:
        try:
            events = parser.feed(chunk)
        except ProtocolError:
            return
        assert isinstance(events, list)
        for event in events:
            assert isinstance(event, tuple) and event[0] in (
                p.MSG,
                p.HMSG,
                p.PING,
                p.PONG,
                p.OK,
                p.ERR,
                p.INFO,
            )


@FUZZ
@given(garbage=_garbage)
def test_fuzz_garbage_after_info_whole(garbage: bytes) -> None:
    parser = p.Parser()
    assert parser.feed(INFO_LINE) == [INFO_EVENT]
    _feed_garbage(parser, [garbage])


@FUZZ
@given(garbage=_garbage, data=st.data())
def test_fuzz_garbage_after_info_split(garbage: bytes, data: Any) -> None:
    parser = p.Parser(max_control_line=128, max_payload=256)
    assert parser.feed(INFO_LINE[:40]) == []
    assert parser.feed(INFO_LINE[40:]) == [INFO_EVENT]
    _feed_garbage(parser, data.draw(splits(garbage)))


# --- hostile input ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 100, 1000])
def test_control_line_without_crlf_is_bounded(chunk: int) -> None:
    limit = 1024
    parser = p.Parser(max_control_line=limit)
    with pytest.raises(ProtocolError, match="exceeds 1024 bytes"):
        for _ in range(10 * limit):
            assert parser.feed(b"A" * chunk) == []
            assert parser._have <= limit + chunk
    assert parser._have <= limit + chunk


def test_control_line_over_limit_with_crlf() -> None:
    parser = p.Parser(max_control_line=16)
    with pytest.raises(ProtocolError, match="exceeds 16 bytes"):
        parser.feed(b"-ERR '" + b"x" * 30 + b"'\r\n")


def test_info_line_over_limit_in_one_feed() -> None:
    parser = p.Parser(max_control_line=100)
    with pytest.raises(ProtocolError):
        parser.feed(b'INFO {"a":"' + b"x" * 200)


def test_control_line_at_limit_is_accepted() -> None:
    line = b"-ERR '123'"
    parser = p.Parser(max_control_line=len(line))
    assert parser.feed(line + b"\r\n") == [(p.ERR, "123")]


def test_control_line_at_limit_split_inside_crlf() -> None:
    line = b"-ERR '123'"
    parser = p.Parser(max_control_line=len(line))
    assert parser.feed(line + b"\r") == []
    assert parser.feed(b"\n") == [(p.ERR, "123")]


def test_msg_size_over_max_payload_raises_before_the_payload_arrives() -> None:
    parser = p.Parser(max_payload=1024)
    with pytest.raises(ProtocolError, match="1025-byte"):
        parser.feed(b"MSG a 1 1025\r\n")
    assert p.Parser(max_payload=1024).feed(b"MSG a 1 1024\r\n") == []  # at the limit: waits


def test_hmsg_size_over_max_payload() -> None:
    with pytest.raises(ProtocolError):
        p.Parser(max_payload=100).feed(b"HMSG a 1 12 101\r\n")


def test_huge_announced_size_with_default_limit() -> None:
    with pytest.raises(ProtocolError):
        p.Parser().feed(b"MSG a 1 99999999999999999999\r\n")


@pytest.mark.parametrize(
    "frame",
    [
        b"MSG a 1 3\r\nabcd\r\n",  # payload longer than announced
        b"MSG a 1 5\r\nabc\r\nPING\r\n",  # shorter than announced
        b"MSG a 1 2\r\nabXY",
        b"HMSG a 1 12 14\r\nNATS/1.0\r\n\r\nhi!\r\n",
    ],
)
def test_size_mismatch(frame: bytes) -> None:
    with pytest.raises(ProtocolError, match="size mismatch"):
        p.Parser().feed(frame)


def test_size_mismatch_detected_when_split() -> None:
    parser = p.Parser()
    assert parser.feed(b"MSG a 1 3\r\nab") == []
    with pytest.raises(ProtocolError):
        parser.feed(b"cd\r\n")


@pytest.mark.parametrize(
    "frame",
    [
        # negative sizes
        b"MSG a 1 -1\r\n\r\n",
        b"MSG a 1 r -5\r\nxx\r\n",
        b"HMSG a 1 -1 5\r\nhello\r\n",
        b"HMSG a 1 12 -12\r\n",
        b"HMSG a 1 r -3 -2\r\n",
        # an HMSG header size over its total size
        b"HMSG a 1 10 5\r\nhello\r\n",
        b"HMSG a 1 r 13 12\r\nNATS/1.0\r\n\r\n\r\n",
        # a bare MSG/HMSG op line (its arguments on the next line)
        b"MSG\r\n",
        b"MSG\r\nfoo 1 2\r\nhi\r\n",
        b"hmsg\r\nfoo 1 0 2\r\nhi\r\n",
        # lines that are no server op at all, or miss arguments
        b"\r\n",  # empty line
        b"   \r\n",
        b"FOO bar\r\n",
        b"PUB a 1\r\n",  # a client op, not a server op
        b"MSG a\r\n",
        b"MSG a 1\r\n",
        b"MSG a 1 r x 2\r\n",
        b"MSG a x 1\r\nz\r\n",  # sid not a number
        b"MSG a 1 x\r\n",  # size not a number
        b"HMSG a 1 2\r\n",
        b"HMSG a 1 r x 12 14 9\r\n",
        b"HMSG a b 0 1\r\nz\r\n",
        b"INFO\r\n",
        b"INFO not json\r\n",
        b"INFO [1,2]\r\n",
        b'INFO "str"\r\n',
        b'INFO {"a":\xff}\r\n',
        b"INFO{}\r\n",
    ],
)
def test_malformed_frames_raise_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.Parser().feed(frame)


def test_protocol_error_is_a_telestion_error_and_shows_the_line() -> None:
    with pytest.raises(Error, match="GARBAGE"):
        p.Parser().feed(b"GARBAGE here\r\n")


def test_long_bad_line_is_shortened_in_the_error() -> None:
    with pytest.raises(ProtocolError) as info:
        p.Parser().feed(b"X" * 1000 + b"\r\n")
    assert len(str(info.value)) < 200


def test_deeply_nested_info_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        p.Parser().feed(b"INFO " + b"[" * 50_000 + b"\r\n")


def test_leading_whitespace_before_msg_is_not_misparsed() -> None:
    try:
        events = p.Parser().feed(b"  MSG 7 3\r\nabc\r\n")
    except ProtocolError:
        return
    assert (p.MSG, b"G", 7, None, b"abc", None) not in events


# --- encoders ---------------------------------------------------------------------------------


def test_frame_constants() -> None:
    assert p.PING_FRAME == b"PING\r\n"
    assert p.PONG_FRAME == b"PONG\r\n"


def test_encode_pub() -> None:
    assert p.encode_pub(b"foo.bar", b"hello") == b"PUB foo.bar 5\r\nhello\r\n"
    assert p.encode_pub(b"foo", b"hi", b"_INBOX.1") == b"PUB foo _INBOX.1 2\r\nhi\r\n"
    assert p.encode_pub(b"foo", b"") == b"PUB foo 0\r\n\r\n"
    assert p.encode_pub(b"foo", b"a\r\nb") == b"PUB foo 4\r\na\r\nb\r\n"


def test_encode_pub_accepts_bytes_like_payloads() -> None:
    assert p.encode_pub(b"foo", bytearray(b"ab")) == b"PUB foo 2\r\nab\r\n"
    assert p.encode_pub(b"foo", memoryview(b"ab")) == b"PUB foo 2\r\nab\r\n"


def test_encode_hpub() -> None:
    block = b"NATS/1.0\r\nA: b\r\n\r\n"
    assert len(block) == 18
    assert p.encode_hpub(b"foo", block, b"hi") == b"HPUB foo 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n"
    assert (
        p.encode_hpub(b"foo", block, b"hi", b"rep") == b"HPUB foo rep 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n"
    )
    assert p.encode_hpub(b"foo", block, b"") == b"HPUB foo 18 18\r\nNATS/1.0\r\nA: b\r\n\r\n\r\n"


def test_encode_sub_and_unsub() -> None:
    assert p.encode_sub(b"foo.*", 7) == b"SUB foo.* 7\r\n"
    assert p.encode_sub(b"foo.>", 12, b"workers") == b"SUB foo.> workers 12\r\n"
    assert p.encode_unsub(7) == b"UNSUB 7\r\n"
    assert p.encode_unsub(7, 3) == b"UNSUB 7 3\r\n"
    assert p.encode_unsub(7, 0) == b"UNSUB 7 0\r\n"


def test_encode_connect() -> None:
    opts = {"verbose": False, "pedantic": False, "name": "tool", "headers": True, "protocol": 1}
    assert p.encode_connect(opts) == (
        b'CONNECT {"verbose":false,"pedantic":false,"name":"tool","headers":true,"protocol":1}\r\n'
    )
    assert p.encode_connect({}) == b"CONNECT {}\r\n"


def test_encode_connect_escapes_and_stays_one_line() -> None:
    frame = p.encode_connect({"pass": 'p"w\r\nd', "name": "gr\u00fcn"})
    assert frame.startswith(b"CONNECT ") and frame.endswith(b"\r\n")
    assert frame.count(b"\r\n") == 1
    assert json.loads(frame[8:-2]) == {"pass": 'p"w\r\nd', "name": "gr\u00fcn"}


@FUZZ
@given(
    subject=_subject,
    reply=_reply,
    payload=st.binary(max_size=100),
    sid=_sid,
    headers=st.none() | st.dictionaries(_hdr_key, _hdr_val, max_size=4),
)
def test_fuzz_pub_and_hpub_frames_mirror_msg_and_hmsg(
    subject: bytes, reply: Optional[bytes], payload: bytes, sid: int, headers: Any
) -> None:
    # The server relays "PUB subj [reply] n" as "MSG subj sid [reply] n" (HPUB likewise as HMSG):
    # the encoders' frames, re-spelled that way, read back through the parser.
    if headers is None:
        frame, op, block = p.encode_pub(subject, payload, reply), b"MSG", None
    else:
        block = p.encode_headers(headers)
        frame, op = p.encode_hpub(subject, block, payload, reply), b"HMSG"
    head, _, rest = frame.partition(b"\r\n")
    args = head.split(b" ")
    assert args[0] == (b"PUB" if headers is None else b"HPUB")
    relayed = op + b" " + b" ".join([args[1], b"%d" % sid] + args[2:]) + b"\r\n" + rest
    assert p.Parser().feed(relayed) == [
        (p.HMSG if block is not None else p.MSG, subject, sid, reply, payload, block)
    ]


# --- headers --------------------------------------------------------------------------------


def test_encode_headers_exact() -> None:
    assert p.encode_headers({}) == b"NATS/1.0\r\n\r\n"
    assert p.encode_headers({"Content-Type": "application/cbor"}) == (
        b"NATS/1.0\r\nContent-Type: application/cbor\r\n\r\n"
    )
    assert p.encode_headers({"A": "b", "C": ["d", "e"]}) == b"NATS/1.0\r\nA: b\r\nC: d\r\nC: e\r\n\r\n"
    assert p.encode_headers({"A": ("x",)}) == b"NATS/1.0\r\nA: x\r\n\r\n"
    assert p.encode_headers({"A": ""}) == b"NATS/1.0\r\nA: \r\n\r\n"


def test_encode_headers_utf8() -> None:
    assert p.encode_headers({"X": "gr\u00fcn"}) == "NATS/1.0\r\nX: gr\u00fcn\r\n\r\n".encode()


def test_parse_headers_plain() -> None:
    assert p.parse_headers(b"NATS/1.0\r\n\r\n") == (None, "", {})
    assert p.parse_headers(b"NATS/1.0\r\nA: b\r\nContent-Type: application/json\r\n\r\n") == (
        None,
        "",
        {"A": "b", "Content-Type": "application/json"},
    )


def test_parse_headers_repeated_keys_joined() -> None:
    assert p.parse_headers(b"NATS/1.0\r\nC: d\r\nA: 1\r\nC: e\r\nC: f\r\n\r\n") == (
        None,
        "",
        {"C": "d, e, f", "A": "1"},
    )
    assert p.parse_headers(p.encode_headers({"C": ["d", "e"]}))[2] == {"C": "d, e"}


@pytest.mark.parametrize(
    "block, status, description",
    [
        (b"NATS/1.0 503\r\n\r\n", 503, ""),
        (b"NATS/1.0 408 Request Timeout\r\n\r\n", 408, "Request Timeout"),
        (b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 7\r\n\r\n", 100, "Idle Heartbeat"),
        (b"NATS/1.0 404 No Messages  \r\n\r\n", 404, "No Messages"),
        (b"NATS/1.0\r\n\r\n", None, ""),
    ],
)
def test_parse_headers_status_lines(block: bytes, status: Optional[int], description: str) -> None:
    got_status, got_desc, _ = p.parse_headers(block)
    assert (got_status, got_desc) == (status, description)


def test_parse_headers_status_with_headers() -> None:
    block = b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\nNats-Pending-Bytes: 0\r\n\r\n"
    assert p.parse_headers(block) == (
        408,
        "Request Timeout",
        {"Nats-Pending-Messages": "1", "Nats-Pending-Bytes": "0"},
    )


def test_parse_headers_value_with_colon_and_surrounding_spaces() -> None:
    assert p.parse_headers(b"NATS/1.0\r\nUrl:  http://x:1/y  \r\n\r\n")[2] == {"Url": "http://x:1/y"}


@pytest.mark.parametrize(
    "block",
    [b"HTTP/1.1 200 OK\r\n\r\n", b"", b"NATS/1.0 abc\r\n\r\n", b"NATS/1.0\r\nno colon here\r\n\r\n"],
)
def test_parse_headers_invalid(block: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.parse_headers(block)


_tchar = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_valid_key = st.text(alphabet=_tchar, min_size=1, max_size=20)
# Values: no CR/LF (refused) and no surrounding whitespace (parse_headers strips it, as HTTP does).
_valid_value = st.text(alphabet=_no_crlf_chars, max_size=30).map(str.strip)


@FUZZ
@given(
    headers=st.dictionaries(
        _valid_key, _valid_value | st.lists(_valid_value, min_size=1, max_size=4), max_size=8
    )
)
def test_fuzz_headers_round_trip(headers: Any) -> None:
    block = p.encode_headers(headers)
    assert block.startswith(b"NATS/1.0\r\n") and block.endswith(b"\r\n\r\n")
    # a repeated key (a list value) reads back as its values joined with ", "
    expected = {k: v if isinstance(v, str) else ", ".join(v) for k, v in headers.items()}
    assert p.parse_headers(block) == (None, "", expected)


@pytest.mark.parametrize("key", ["", "a b", "a:b", "Key:", "a\tb", "a\rb", "a\nb", " lead"])
def test_encode_headers_invalid_names(key: str) -> None:
    with pytest.raises(ValueError) as info:
        p.encode_headers({key: "v"})
    assert repr(key) in str(info.value)


def test_encode_headers_non_str_name() -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        p.encode_headers({5: "v"})  # type: ignore[dict-item]
    assert "5" in str(info.value)


@pytest.mark.parametrize("value", ["a\r\nInjected: yes", "a\rb", "a\nb", ["ok", "bad\n"]])
def test_encode_headers_values_with_cr_or_lf(value: Any) -> None:
    with pytest.raises(ValueError) as info:
        p.encode_headers({"X-Key": value})
    assert "'X-Key'" in str(info.value)


@pytest.mark.parametrize("value", [["ok", 5], [None], b"bytes", [b"x"]])
def test_encode_headers_non_str_values(value: Any) -> None:
    with pytest.raises(TypeError) as info:
        p.encode_headers({"X-Key": value})
    assert "'X-Key'" in str(info.value)


@pytest.mark.parametrize("value", [5, None, 1.5])
def test_encode_headers_scalar_non_str_value_names_key(value: Any) -> None:
    with pytest.raises(TypeError) as info:
        p.encode_headers({"X-Count": value})
    assert "'X-Count'" in str(info.value)


# --- subjects and queue groups ---------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "foo",
        "foo.bar",
        "a.b.c.d",
        "_INBOX.abc123.1",
        "telemetry.temp",
        "$SYS.REQ",
        "a-b_c.D9",
        "gr\u00fcn.t",
        "fo*o",
        "foo>",
        "x.>y",
    ],
)
def test_valid_literal_subjects(subject: str) -> None:
    assert p.validate_subject(subject, wildcards=False) == subject.encode()
    assert p.validate_subject(subject, wildcards=True) == subject.encode()


@pytest.mark.parametrize("subject", ["*", ">", "foo.*", "foo.>", "*.bar", "a.*.c", "a.*.>", "*.*"])
def test_valid_wildcard_subjects(subject: str) -> None:
    assert p.validate_subject(subject, wildcards=True) == subject.encode()


@pytest.mark.parametrize("subject", ["*", ">", "foo.*", "foo.>", "*.bar", "a.*.c"])
def test_wildcards_refused_for_publish(subject: str) -> None:
    with pytest.raises(BadSubjectError) as info:
        p.validate_subject(subject, wildcards=False)
    assert repr(subject) in str(info.value)
    assert "wildcard" in str(info.value)


@pytest.mark.parametrize("subject", [">.foo", "a.>.b", ">.>"])
def test_gt_not_last(subject: str) -> None:
    with pytest.raises(BadSubjectError) as info:
        p.validate_subject(subject, wildcards=True)
    assert repr(subject) in str(info.value)


@pytest.mark.parametrize(
    "subject",
    [
        "foo bar",
        " foo",
        "foo ",
        "foo\tbar",
        "foo\r\n",
        "a\nb",
        "a\x0bb",
        "a\x0cb",
        "foo..bar",
        ".foo",
        "foo.",
        ".",
        "..",
    ],
)
@pytest.mark.parametrize("wildcards", [True, False])
def test_invalid_subjects_name_the_subject(subject: str, wildcards: bool) -> None:
    with pytest.raises(BadSubjectError) as info:
        p.validate_subject(subject, wildcards=wildcards)
    assert repr(subject) in str(info.value)


def test_empty_subject() -> None:
    with pytest.raises(BadSubjectError, match="empty"):
        p.validate_subject("", wildcards=True)


@pytest.mark.parametrize("subject", [b"foo", None, 5])
def test_non_str_subject(subject: Any) -> None:
    with pytest.raises(BadSubjectError) as info:
        p.validate_subject(subject, wildcards=False)
    assert repr(subject) in str(info.value)


def test_bad_subject_error_is_value_error_and_telestion_error() -> None:
    with pytest.raises(ValueError):
        p.validate_subject("a..b", wildcards=False)
    with pytest.raises(Error):
        p.validate_subject("a..b", wildcards=False)


@FUZZ
@given(tokens=st.lists(_token.filter(lambda t: t not in ("*", ">")), min_size=1, max_size=6))
def test_fuzz_valid_literal_subjects(tokens: List[str]) -> None:
    subject = ".".join(tokens)
    assert p.validate_subject(subject, wildcards=False) == subject.encode()


@FUZZ
@given(subject=st.text(max_size=20))
def test_fuzz_validate_subject_only_raises_bad_subject(subject: str) -> None:
    for wildcards in (True, False):
        try:
            encoded = p.validate_subject(subject, wildcards=wildcards)
        except BadSubjectError:
            continue
        assert encoded == subject.encode()
        assert subject and not any(c in subject for c in " \t\r\n\f\v")
        assert all(subject.split("."))


@pytest.mark.parametrize("queue", ["workers", "q.1", "my-service", "*", "a>b"])
def test_valid_queues(queue: str) -> None:
    assert p.validate_queue(queue) == queue.encode()


@pytest.mark.parametrize("queue", ["a b", "a\tb", " q", "q\n", "q\r"])
def test_invalid_queues_name_the_queue(queue: str) -> None:
    with pytest.raises(BadSubjectError) as info:
        p.validate_queue(queue)
    assert repr(queue) in str(info.value)


@pytest.mark.parametrize("queue", ["", None, 5, b"q"])
def test_empty_or_non_str_queue(queue: Any) -> None:
    with pytest.raises(BadSubjectError) as info:
        p.validate_queue(queue)
    assert repr(queue) in str(info.value)
    assert isinstance(info.value, ValueError)


# --- p.ClientProtocol: the connection's state, without a server ----------------------------

_INFO = b'INFO {"server_id":"S","max_payload":1048576,"connect_urls":["10.0.0.1:4222"]}\r\n'


def test_client_protocol_handshake_steps() -> None:
    proto = p.ClientProtocol("nats://h:4222")
    proto.receive_handshake(_INFO[:10])  # a partial INFO waits
    assert proto.state != p.GOT_INFO
    proto.receive_handshake(_INFO[10:] + b"PING\r\n")
    assert proto.state == p.GOT_INFO
    assert proto.info["server_id"] == "S" and proto.max_payload == 1048576
    assert proto.data_to_send() == b"PONG\r\n"  # the automatic PONG, owed once
    assert proto.data_to_send() == b""
    frame = proto.connect_frame({"verbose": False})
    assert frame == b'CONNECT {"verbose":false}\r\nPING\r\n' and proto.state == p.AWAIT_PONG
    proto.receive_handshake(b"+OK\r\nPONG\r\nMSG a 1 2\r\nhi\r\n")
    assert proto.state == p.OPEN
    assert proto.early == [(1, b"a", 1, None, b"hi", None)]  # after the PONG: for the reader


def test_client_protocol_refusal_is_sorted() -> None:
    proto = p.ClientProtocol("nats://h:4222")
    proto.receive_handshake(_INFO)
    proto.connect_frame({})
    with pytest.raises(AuthenticationError, match="refused the credentials"):
        proto.receive_handshake(b"-ERR 'Authorization Violation'\r\n")
    err = proto.on_err("Permissions Violation for Subscription to \"a.b\" using queue \"q\"")
    assert isinstance(err, PermissionViolationError)
    assert (err.operation, err.subject, err.queue) == ("subscribe", "a.b", "q")
    assert type(proto.on_err("Unknown Protocol Operation")) is Error


def test_client_protocol_rejects_connect_before_info_and_http_answers() -> None:
    with pytest.raises(ProtocolError, match="before the server's INFO"):
        p.ClientProtocol().connect_frame({})
    with pytest.raises(WebSocketError, match="answered with HTTP"):
        p.ClientProtocol().receive_handshake(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(ProtocolError, match="unexpected"):
        p.ClientProtocol().receive_handshake(b"MSG a 1 2\r\nhi\r\n")


def test_client_protocol_http_probe_and_its_answers() -> None:
    """The probe for a silent server: HTTP back is a WebSocket port (wss:// when Go says the
    port wants TLS), also when the status line comes in pieces; an INFO back is a slow NATS
    server that rejects the probe, reported before the -ERR it sends (no auth failure)."""
    proto = p.ClientProtocol("nats://h:1")
    assert not proto.probed
    assert proto.http_probe("h:1") == b"GET / HTTP/1.1\r\nHost: h:1\r\nConnection: close\r\n\r\n"
    assert proto.probed
    proto.receive_handshake(b"HT")
    answer = r"nats://h:1 answered with HTTP \(HTTP/1.1 400 Bad Request\).*use a ws://"
    with pytest.raises(WebSocketError, match=answer) as info:
        proto.receive_handshake(b"TP/1.1 400 Bad Request\r\nSec-Websocket-Version: 13\r\n\r\n")
    assert not info.value.retryable and info.value.status is None
    with pytest.raises(WebSocketError, match="use a wss:// URL"):
        p.ClientProtocol().receive_handshake(
            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
        )
    late = p.ClientProtocol("nats://h:1")
    late.http_probe("h:1")
    with pytest.raises(ProtocolError, match="only after the HTTP probe"):
        late.receive_handshake(_INFO + b"-ERR 'Authorization Violation'\r\n")
    assert late.state == p.AWAIT_INFO


def test_client_protocol_bounds_an_announced_max_payload() -> None:
    proto = p.ClientProtocol()
    proto.receive_handshake(b'INFO {"max_payload": 1000000000000}\r\n')
    assert proto.max_payload == 64 * 1024 * 1024


def test_client_protocol_keepalive_and_stale_detection_with_time_passed_in() -> None:
    proto = p.ClientProtocol(ping_interval=10.0, max_outstanding_pings=2, now=100.0)
    assert proto.keepalive(105.0) is None
    assert proto.keepalive(110.0) == p.PING_DUE and proto.pings_out == 1
    assert proto.keepalive(115.0) is None
    assert proto.keepalive(120.0) == p.PING_DUE and proto.pings_out == 2
    proto.on_pong()  # answered: the count starts again
    assert proto.pings_out == 0
    assert proto.keepalive(130.0) == p.PING_DUE
    assert proto.keepalive(140.0) == p.PING_DUE
    assert proto.keepalive(150.0) == p.STALE  # two unanswered: stale (nats.go's rule)
    assert proto.next_ping == 160.0


def test_client_protocol_merges_info_and_sees_lame_duck() -> None:
    proto = p.ClientProtocol()
    proto.receive_handshake(_INFO)
    assert proto.on_info({"connect_urls": ["10.0.0.2:4222"]}) is False
    assert proto.info["server_id"] == "S" and proto.info["connect_urls"] == ["10.0.0.2:4222"]
    assert proto.on_info({"ldm": True}) is True
    assert proto.on_ping() == b"PONG\r\n"


# --- validate_subject: the one-regex fast path agrees with the token-by-token check -----------

_SUBJECT_CHARS = st.sampled_from(
    ["a", "Z", "0", "-", "_", "$", ".", "*", ">", " ", "\t", "\r", "\n", "\f", "\v", "\x00", "\x85",
     "\u00a0", "\u2028", "é", "日", "\ud800", "\udcff", "\U0001f600"]
)  # fmt: skip
_SUBJECT_TOKENS = st.sampled_from(["a", "b1", "*", ">", "a*b", "a>", "", " ", "\f", "\v", "\ud800"])


def _check_subject(check: Any, subject: Any, wildcards: bool) -> Any:
    try:
        return check(subject, wildcards=wildcards)
    except (BadSubjectError, UnicodeEncodeError) as exc:
        return type(exc)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.lists(_SUBJECT_CHARS, max_size=12).map("".join),
        st.lists(_SUBJECT_TOKENS, max_size=5).map(".".join),
        st.text(max_size=10),
    ),
    st.booleans(),
)
def test_validate_subject_fast_path_agrees_with_the_token_check(subject: str, wildcards: bool) -> None:
    fast = _check_subject(p.validate_subject, subject, wildcards)
    real = p._PLAIN_SUBJECT
    p._PLAIN_SUBJECT = re.compile(r"(?!)")  # never matches: every subject takes the slow path
    try:
        slow = _check_subject(p.validate_subject, subject, wildcards)
    finally:
        p._PLAIN_SUBJECT = real
    assert fast == slow


@pytest.mark.parametrize("subject", [b"a", None, 1, ["a"], bytearray(b"a")])
def test_validate_subject_refuses_non_str(subject: Any) -> None:
    with pytest.raises(BadSubjectError, match="must be a str"):
        p.validate_subject(subject, wildcards=True)
