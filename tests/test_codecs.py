"""Unit tests of the payload codecs and of Message decoding (no server needed)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import telestion_sync as ts
from telestion_sync import codecs as c
from telestion_sync.errors import DecodeError
from telestion_sync.message import Message, MessageContext, make_message

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CBOR_HEADERS = {"Content-Type": "application/cbor"}
JSON_HEADERS = {"Content-Type": "application/json"}

_text = st.text(max_size=12)  # hypothesis leaves out surrogates by default
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)
_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)  # NaN != NaN; infinities are fine in CBOR
    | _text
    | st.binary(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_text | st.integers() | st.binary(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


def make(
    subject: str,
    payload: bytes = b"",
    headers: Any = None,
    codec: c.Codec = c.AUTO,
    schema: Any = None,
) -> Message:
    """A detached Message as a subscription with ``codec`` and ``schema`` would deliver it."""
    return Message(subject, payload, None, headers, MessageContext(None, codec, schema))


class Opaque:
    """Something no codec knows how to encode."""


# --- JSON ---------------------------------------------------------------------------------------


@FUZZ
@given(value=_json_values)
def test_fuzz_json_round_trip(value: Any) -> None:
    payload = c.JSON.encode(value)
    assert isinstance(payload, bytes)
    assert c.JSON.decode(payload) == value
    assert json.loads(payload.decode("utf-8")) == value  # plain UTF-8 JSON, what TypeScript reads
    # "auto" sends non-bytes as the same JSON and reads it back without a header
    assert c.AUTO.encode(value) == payload
    assert c.AUTO.decode(payload) == value
    assert c.decode_auto(payload, None) == value
    assert c.decode_auto(payload, JSON_HEADERS) == value


def test_json_is_compact_utf8_without_header() -> None:
    assert c.JSON.content_type is None
    assert c.JSON.encode({"a": [1, 2], "b": "gr\u00fcn"}) == '{"a":[1,2],"b":"gr\u00fcn"}'.encode()
    assert c.JSON.encode(None) == b"null"
    assert c.JSON.encode("x") == b'"x"'


@pytest.mark.parametrize("value", [b"x", bytearray(b"x"), memoryview(b"x")])
def test_json_refuses_bytes(value: Any) -> None:
    with pytest.raises(TypeError, match="bytes"):
        c.JSON.encode(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -math.inf, {"a": [float("nan")]}])
def test_json_refuses_nan_and_infinity(value: Any) -> None:
    with pytest.raises(ValueError, match="float"):
        c.JSON.encode(value)


@pytest.mark.parametrize(
    "value, name",
    [(Opaque(), "Opaque"), ({"a": Opaque()}, "Opaque"), ([1, Opaque()], "Opaque"), ({1, 2}, "set")],
)
def test_json_refuses_unknown_objects_naming_the_type(value: Any, name: str) -> None:
    with pytest.raises(TypeError) as info:
        c.JSON.encode(value)
    assert name in str(info.value)


def test_json_refuses_bytes_nested_naming_the_type() -> None:
    with pytest.raises(TypeError, match="bytes"):
        c.JSON.encode({"img": b"\x00"})


def test_json_decode_errors_are_value_errors() -> None:
    for payload in (b"{", b"\xff", b"", b"[1,]"):
        with pytest.raises(ValueError):
            c.JSON.decode(payload)


# --- CBOR ---------------------------------------------------------------------------------------


@FUZZ
@given(value=_cbor_values)
def test_fuzz_cbor_round_trip(value: Any) -> None:
    payload = c.CBOR.encode(value)
    assert isinstance(payload, bytes)
    assert c.CBOR.decode(payload) == value
    # "auto" decodes it by its Content-Type header
    assert c.decode_auto(payload, CBOR_HEADERS) == value


def test_cbor_bytes_inside_structures_survive() -> None:
    value = {"img": b"\x00\x01\xff", "meta": {"n": 3, "raw": [b"", b"\r\n"]}}
    assert c.CBOR.decode(c.CBOR.encode(value)) == value
    assert c.CBOR.content_type == "application/cbor"


@pytest.mark.parametrize("value", [Opaque(), {"a": Opaque()}, [Opaque()]])
def test_cbor_encode_error_is_type_error(value: Any) -> None:
    with pytest.raises(TypeError) as info:
        c.CBOR.encode(value)
    assert "CBOR" in str(info.value)
    assert "Opaque" in str(info.value)


def test_cbor_encode_cyclic_structure_is_type_error() -> None:
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(TypeError, match="CBOR"):
        c.CBOR.encode(cyclic)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff", b"\x82\x01", b"\x5b\x00\x00\x00\x0f\xff\xff\xff\xff", b"\x81" * 10_000 + b"\x00"],
)
def test_cbor_decode_errors_are_value_errors(payload: bytes) -> None:
    with pytest.raises(ValueError, match="CBOR"):
        c.CBOR.decode(payload)


@FUZZ
@given(payload=st.binary(max_size=64))
def test_fuzz_cbor_decode_only_raises_value_error(payload: bytes) -> None:
    try:
        c.CBOR.decode(payload)
    except ValueError:
        pass


def test_cbor_refuses_trailing_data() -> None:
    with pytest.raises(ValueError):
        c.CBOR.decode(b"\x01\x02")


# --- raw ------------------------------------------------------------------------------------------


@FUZZ
@given(payload=st.binary(max_size=64))
def test_fuzz_raw_round_trip(payload: bytes) -> None:
    assert c.RAW.encode(payload) is payload
    assert c.RAW.decode(payload) is payload
    assert c.RAW.encode(bytearray(payload)) == payload
    assert type(c.RAW.encode(memoryview(payload))) is bytes


def test_raw_encodes_str_as_utf8_and_refuses_others() -> None:
    assert c.RAW.content_type is None
    assert c.RAW.encode("gr\u00fcn") == "gr\u00fcn".encode()
    for value, name in ((5, "int"), ({"a": 1}, "dict"), (None, "NoneType")):
        with pytest.raises(TypeError, match=name):
            c.RAW.encode(value)


# --- auto -----------------------------------------------------------------------------------------


def test_auto_encode() -> None:
    assert c.AUTO.content_type is None
    assert c.AUTO.encode(b"\x00\x01") == b"\x00\x01"
    assert c.AUTO.encode(bytearray(b"ab")) == b"ab"
    assert type(c.AUTO.encode(memoryview(b"ab"))) is bytes
    assert c.AUTO.encode({"a": 1}) == b'{"a":1}'
    assert c.AUTO.encode("text") == b'"text"'
    with pytest.raises(TypeError, match="Opaque"):
        c.AUTO.encode(Opaque())


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b'{"a":1}', {"a": 1}),
        (b"[1,2]", [1, 2]),
        (b'"s"', "s"),
        (b"-1.5", -1.5),
        (b"0", 0),
        (b"true", True),
        (b"false", False),
        (b"null", None),
        (b' \t\r\n{"a":1} \n', {"a": 1}),
        ("\u00fc".join(['"', '"']).encode(), "\u00fc"),
        (b"\x00\x01\x02", b"\x00\x01\x02"),
        (b"\xff\xfe", b"\xff\xfe"),
        (b"", b""),
        (b"hello", b"hello"),
        # bytes that start like JSON but are not JSON stay bytes
        (b"{not json", b"{not json"),
        (b"[1, 2", b"[1, 2"),
        (b"123abc", b"123abc"),
        (b"tru", b"tru"),
        (b"nope", b"nope"),
        (b"-", b"-"),
        (b'"unterminated', b'"unterminated'),
        (b"   ", b"   "),
        (b"\r\n", b"\r\n"),
        (b'{"a":1}{"b":2}', b'{"a":1}{"b":2}'),
        (b"[\xff]", b"[\xff]"),
        (b"NaN", b"NaN"),
        (b"Infinity", b"Infinity"),
    ],
)
def test_auto_without_header(payload: bytes, expected: Any) -> None:
    got = c.decode_auto(payload, None)
    assert got == expected and type(got) is type(expected)
    assert c.AUTO.decode(payload) == expected
    assert c.decode_auto(payload, {}) == expected
    assert c.decode_auto(payload, {"Other": "x"}) == expected


@FUZZ
@given(payload=st.binary(max_size=64) | _json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_auto_without_header_never_raises(payload: bytes) -> None:
    got = c.decode_auto(payload, None)
    if got is not payload:
        assert got == json.loads(payload)


@pytest.mark.parametrize("payload", [b"1\x00", b"[\x00]\x00", b"7\x00\x00\x00"])
def test_auto_binary_with_nul_bytes_stays_bytes(payload: bytes) -> None:
    assert c.decode_auto(payload, None) == payload


@pytest.mark.parametrize("payload", [b"-Infinity", b"[NaN]", b'{"a":Infinity}'])
def test_auto_non_standard_json_stays_bytes(payload: bytes) -> None:
    assert c.decode_auto(payload, None) == payload


def test_auto_deeply_nested_stays_bytes() -> None:
    payload = b"[" * 100_000
    assert c.decode_auto(payload, None) == payload


@pytest.mark.parametrize(
    "ctype",
    ["application/cbor", "APPLICATION/CBOR", "application/cbor; foo=bar", " application/cbor "],
)
def test_auto_content_type_cbor(ctype: str) -> None:
    payload = c.CBOR.encode({"img": b"\x00"})
    assert c.decode_auto(payload, {"Content-Type": ctype}) == {"img": b"\x00"}


def test_auto_content_type_cbor_with_bad_payload_raises_value_error() -> None:
    with pytest.raises(ValueError):
        c.decode_auto(b"\xff", CBOR_HEADERS)


@pytest.mark.parametrize("ctype", ["application/json", "Application/JSON; charset=utf-8"])
def test_auto_content_type_json(ctype: str) -> None:
    assert c.decode_auto(b'{"a":1}', {"Content-Type": ctype}) == {"a": 1}
    with pytest.raises(ValueError):
        c.decode_auto(b"\x00 not json", {"Content-Type": ctype})


@pytest.mark.parametrize("ctype", ["text/plain", "application/octet-stream", "image/png", ""])
def test_auto_other_content_types_are_raw(ctype: str) -> None:
    # even when the payload would parse as JSON or CBOR
    for payload in (b'{"a":1}', c.CBOR.encode([1]), b"\x00"):
        assert c.decode_auto(payload, {"Content-Type": ctype}) == payload


# --- get_codec and may_fail ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, codec",
    [
        ("json", c.JSON),
        ("cbor", c.CBOR),
        ("raw", c.RAW),
        ("auto", c.AUTO),
        ("bytes", c.RAW),
        ("binary", c.RAW),
        ("JSON", c.JSON),
        ("Cbor", c.CBOR),
    ],
)
def test_get_codec_by_name(name: str, codec: c.Codec) -> None:
    assert c.get_codec(name) is codec


def test_get_codec_default_and_objects() -> None:
    assert c.get_codec(None) is c.AUTO
    assert c.get_codec(None, c.JSON) is c.JSON
    assert c.get_codec(c.CBOR) is c.CBOR

    class Upper:
        name = "upper"
        content_type = None

        def encode(self, obj: Any) -> bytes:
            return str(obj).upper().encode()

        def decode(self, payload: bytes) -> Any:
            return payload.decode()

    duck = Upper()
    assert c.get_codec(duck) is duck  # type: ignore[arg-type]


def test_codec_classes_are_exported() -> None:
    assert isinstance(c.JSON, ts.JSONCodec) and isinstance(c.CBOR, ts.CBORCodec)
    assert isinstance(c.RAW, ts.RawCodec) and isinstance(c.AUTO, ts.Codec)
    assert "json" in repr(c.JSON)


@pytest.mark.parametrize("name", ["xml", "", "msgpack"])
def test_get_codec_unknown_name(name: str) -> None:
    with pytest.raises(ValueError) as info:
        c.get_codec(name)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("spec", [5, object(), b"json"])
def test_get_codec_wrong_type(spec: Any) -> None:
    with pytest.raises(TypeError, match="codec"):
        c.get_codec(spec)


def test_codec_base_class_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        c.Codec().encode(1)
    with pytest.raises(NotImplementedError):
        c.Codec().decode(b"")


def test_may_fail() -> None:
    assert c.may_fail(c.AUTO, None) is False
    assert c.may_fail(c.AUTO, {}) is False
    assert c.may_fail(c.AUTO, {"Other": "x"}) is False
    assert c.may_fail(c.AUTO, CBOR_HEADERS) is True
    assert c.may_fail(c.RAW, CBOR_HEADERS) is False
    assert c.may_fail(c.JSON, None) is True
    assert c.may_fail(c.CBOR, None) is True


# --- Message.data, json(), cbor() -----------------------------------------------------------------


def test_message_data_auto() -> None:
    assert make("s", b'{"a":1}').data == {"a": 1}
    assert make("s", b"\x00\x01").data == b"\x00\x01"
    assert make("s", c.CBOR.encode({"b": b"\x01"}), headers=CBOR_HEADERS).data == {"b": b"\x01"}
    assert make("s").data == b""


def test_message_data_is_decoded_once() -> None:
    msg = make("s", b'{"a":[1]}')
    first = msg.data
    assert msg.data is first


def test_message_data_with_codec() -> None:
    assert make("s", b"[1]", codec=c.RAW).data == b"[1]"
    assert make("s", b"[1]", codec=c.JSON).data == [1]
    assert make("s", c.CBOR.encode([1, b"x"]), codec=c.CBOR).data == [1, b"x"]


@pytest.mark.parametrize(
    "payload, headers, codec",
    [
        (b"\xff", None, c.CBOR),
        (b"", None, c.CBOR),
        (b"\x82\x01", None, c.CBOR),
        (b"\xff", CBOR_HEADERS, c.AUTO),
        (b"{bad", JSON_HEADERS, c.AUTO),
        (b"{bad", None, c.JSON),
        (b"\xff", None, c.JSON),
    ],
)
def test_message_data_decode_error_carries_the_message(payload: bytes, headers: Any, codec: c.Codec) -> None:
    msg = make("sensor.cam", payload, headers=headers, codec=codec)
    with pytest.raises(DecodeError) as info:
        _ = msg.data
    err = info.value
    assert err.msg is msg
    assert err.msg.payload == payload
    assert msg.payload == payload
    assert "sensor.cam" in str(err)
    assert codec.name in str(err)
    assert isinstance(err, ValueError) and isinstance(err, ts.Error)
    assert isinstance(err.__cause__, Exception)
    with pytest.raises(DecodeError):  # a failure is not cached as a value
        _ = msg.data


def test_message_data_custom_codec_failure_is_decode_error() -> None:
    class Broken(c.Codec):
        name = "broken"

        def decode(self, payload: bytes) -> Any:
            raise KeyError("boom")

    msg = make("s", b"x", codec=Broken())
    with pytest.raises(DecodeError, match="broken") as info:
        _ = msg.data
    assert info.value.msg is msg


def test_schema_converts() -> None:
    calls = []

    def schema(value: Any) -> Any:
        calls.append(value)
        return value["a"] * 2

    msg = make("s", b'{"a":21}', schema=schema)
    assert msg.data == 42
    assert msg.data == 42
    assert calls == [{"a": 21}]


class Reading:
    """A plain callable schema: called with the decoded value as its one argument."""

    def __init__(self, value: Dict[str, Any]) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reading) and other.value == self.value


def test_schema_is_called_with_the_decoded_value() -> None:
    assert make("s", b'{"celsius":21.5}', schema=Reading).data == Reading({"celsius": 21.5})


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_schema_dataclass_from_json_object() -> None:
    assert make("s", b'{"x":1,"y":2}', schema=Point).data == Point(1, 2)


@pytest.mark.parametrize(
    "schema",
    [
        lambda v: v["missing"],  # KeyError
        lambda v: int(v["a"]),  # ValueError
        lambda v: 1 / 0,  # ZeroDivisionError
    ],
)
def test_schema_failures_are_decode_errors(schema: Any) -> None:
    msg = make("tele.x", b'{"a":"x"}', schema=schema)
    with pytest.raises(DecodeError, match="schema") as info:
        _ = msg.data
    assert info.value.msg is msg
    assert msg.payload == b'{"a":"x"}'
    assert "tele.x" in str(info.value)


def test_schema_not_called_when_decoding_fails() -> None:
    called: List[Any] = []
    msg = make("s", b"\xff", codec=c.CBOR, schema=called.append)
    with pytest.raises(DecodeError):
        _ = msg.data
    assert called == []


def test_message_json_and_cbor_whatever_the_codec() -> None:
    msg = make("s", b'{"a":1}', codec=c.RAW)
    assert msg.data == b'{"a":1}'
    assert msg.json() == {"a": 1}
    msg = make("s", c.CBOR.encode({"a": b"\x00"}), codec=c.RAW)
    assert msg.cbor() == {"a": b"\x00"}


@pytest.mark.parametrize("payload", [b"\xff\x00", b"{", b"", b"nope"])
def test_message_json_error(payload: bytes) -> None:
    msg = make("s.j", payload)
    with pytest.raises(DecodeError, match="not JSON") as info:
        msg.json()
    assert info.value.msg is msg and msg.payload == payload


@pytest.mark.parametrize("payload", [b"\xff", b"", b"\x82\x01"])
def test_message_cbor_error(payload: bytes) -> None:
    msg = make("s.c", payload)
    with pytest.raises(DecodeError, match="not CBOR") as info:
        msg.cbor()
    assert info.value.msg is msg and msg.payload == payload


def test_message_json_deeply_nested_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        make("s", b"[" * 100_000).json()


@FUZZ
@given(payload=st.binary(max_size=64), ctype=st.sampled_from([None, "application/cbor", "application/json"]))
def test_fuzz_message_data_raises_only_decode_error(payload: bytes, ctype: Any) -> None:
    headers = {"Content-Type": ctype} if ctype else None
    for codec in (c.AUTO, c.JSON, c.CBOR, c.RAW):
        msg = make("s", payload, headers=headers, codec=codec)
        try:
            _ = msg.data
        except DecodeError as err:
            assert err.msg is msg and msg.payload == payload


def test_message_headers_default_and_repr() -> None:
    assert make("s").headers == {}
    assert make("s").status is None
    msg = Message("s", b"x" * 50, "r", {"A": "b"})
    assert msg.headers == {"A": "b"}
    text = repr(msg)
    assert "'s'" in text and "reply='r'" in text and "'A'" in text and "..." in text


def test_status_message_decodes_like_any_other() -> None:
    msg = make_message("_INBOX.1", b"", None, {}, MessageContext(None), 503, "")
    assert (msg.status, msg.description) == (503, "")
    assert "status=503" in repr(msg)
    assert msg.data == b""
    msg = make_message("s", b"[1]", None, None, MessageContext(None), 408, "Request Timeout")
    assert (msg.status, msg.description, msg.data) == (408, "Request Timeout", [1])
    plain = make_message("s", b"x", None, None, MessageContext(None), None, "")
    assert plain.status is None and plain.description == ""
