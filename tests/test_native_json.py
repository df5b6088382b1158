"""walletgate._native.parse_json: strict, exact JSON, checked against a pure-Python reference."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from walletgate import _native as native


class Rejected(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise Rejected("duplicate key")
    return result


def _reject_constant(name: str) -> Any:
    raise Rejected(name)


def _check(value: Any, depth: int, max_depth: int) -> None:
    """Rejects what Python's json accepts but strict JSON does not: lone surrogates, depth."""
    if isinstance(value, str):
        value.encode("utf-8")  # UnicodeEncodeError on a lone surrogate
    elif isinstance(value, (dict, list)):
        if depth + 1 > max_depth:
            raise Rejected("too deep")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _check(key, depth + 1, max_depth)
            _check(item, depth + 1, max_depth)


def reference(data: bytes, max_depth: int = 32) -> Any:
    """The strict result per the contract, with Python's json, or raises."""
    text = data.decode("utf-8")
    value = json.loads(
        text,
        object_pairs_hook=_no_duplicates,
        parse_float=lambda literal: ("decimal", literal),
        # The spec's integers are `0|[1-9][0-9]*`, optionally negative but never `-0`.
        parse_int=lambda literal: ("decimal", literal) if literal == "-0" else int(literal),
        parse_constant=_reject_constant,
    )
    _check(value, 0, max_depth)
    return value


def plain(value: Any) -> Any:
    """The native result with JsonDecimal written as ("decimal", literal), for comparison."""
    if isinstance(value, native.JsonDecimal):
        return ("decimal", value.literal)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types (True is not 1) and order of keys."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# --- exactness -----------------------------------------------------------------------------------


def test_decimal_stays_exact_where_orjson_loses_it() -> None:
    body = b'{"money":123456789012345.1234}'
    value = native.parse_json(body)["money"]
    assert isinstance(value, native.JsonDecimal)
    assert value.literal == "123456789012345.1234"
    assert native.parse_money(value) == 1_234_567_890_123_451_234
    assert repr(value) == "JsonDecimal('123456789012345.1234')"
    lossy = orjson.loads(body)["money"]
    assert isinstance(lossy, float)
    assert Decimal(lossy) != Decimal("123456789012345.1234")
    assert repr(lossy) != "123456789012345.1234"


@pytest.mark.parametrize(
    "literal",
    [
        "0.1",
        "33.66",
        "-0.0",
        "1.00000",
        "1e3",
        "1E+3",
        "-1.5e-300",
        "1e400",
        "123456789012345678901234567890.123456789",
    ],
)
def test_non_integers_keep_their_literal(literal: str) -> None:
    value = native.parse_json(literal.encode())
    assert isinstance(value, native.JsonDecimal)
    assert value.literal == literal
    assert native.parse_json(f"[{literal}]".encode())[0].literal == literal


@pytest.mark.parametrize(
    "number",
    [
        0,
        -1,
        999_999_999_999_999_999,
        -999_999_999_999_999_999,
        2**63 - 1,
        -(2**63),
        2**63,
        -(2**63) - 1,
        10**19,
        2**64,
        2**200,
        -(3**300),
    ],
)
def test_integers_are_exact_ints(number: int) -> None:
    value = native.parse_json(str(number).encode())
    assert type(value) is int
    assert value == number


def test_minus_zero_is_a_decimal_so_integer_only_fields_refuse_it() -> None:
    value = native.parse_json(b"-0")
    assert isinstance(value, native.JsonDecimal)
    assert value.literal == "-0"
    assert native.parse_money(value) == 0  # a decimal field still reads it as zero
    assert type(native.parse_json(b"[0]")[0]) is int


def test_too_long_integer_is_a_value_error() -> None:
    limit = sys.get_int_max_str_digits()
    body = b"1" * (max(limit, 640) + 1)
    try:
        sys.set_int_max_str_digits(640)
        with pytest.raises(ValueError):
            native.parse_json(body)
    finally:
        sys.set_int_max_str_digits(limit)


@settings(max_examples=1_000, deadline=None)
@given(st.integers())
def test_any_integer_round_trips(number: int) -> None:
    value = native.parse_json(str(number).encode())
    assert type(value) is int
    assert value == number


# --- structure -----------------------------------------------------------------------------------


def test_types_and_order() -> None:
    value = native.parse_json(
        b' {"b": [1, "x", null, true, false, {}], "a": {"c": -2.50}, "\\u00e9": ""} '
    )
    assert list(value) == ["b", "a", "é"]
    assert value["b"][:3] == [1, "x", None]
    assert value["b"][3] is True
    assert value["b"][4] is False
    assert value["b"][5] == {}
    assert value["a"]["c"].literal == "-2.50"


def test_minigame_body() -> None:
    body = (
        b'{"app_id":"10013","bet":"3","game_id":74,"money":"-3",'
        b'"order_id":"20240716195311drxaoz1mxx6g","end_round":false,"type":1,'
        b'"cancel_order_id":"","award_order_ids":null}'
    )
    value = native.parse_json(body)
    assert value == json.loads(body)
    assert native.parse_money(value["money"]) == -30_000


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (rb'"a\"b\\c\/d\be\ff\ng\rh\ti"', 'a"b\\c/d\be\ff\ng\rh\ti'),
        (rb'"\u0041\u00e9\u4E2D"', "Aé中"),
        (rb'"\u0000"', "\x00"),
        (rb'"\ud83d\ude00"', "😀"),
        ('"€ raw ✓ 😀 “”"'.encode(), "€ raw ✓ 😀 “”"),
        (b'"\x7f"', "\x7f"),
    ],
)
def test_strings(body: bytes, expected: str) -> None:
    assert native.parse_json(body) == expected


# --- rejections ----------------------------------------------------------------------------------


def test_duplicate_keys_rejected_where_orjson_keeps_the_last() -> None:
    body = b'{"money":"1","money":"1000"}'
    with pytest.raises(ValueError, match="duplicate key"):
        native.parse_json(body)
    assert orjson.loads(body) == {"money": "1000"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":1,"a":1}',
        b'{"a":1,"b":2,"a":3}',
        b'{"x":{"a":1,"a":2}}',
        b'{"x":[{"ok":1},{"y":{"a":1,"a":2}}]}',
        b'[{"a":1,"a":2}]',
        b'[[[{"z":{"a":{},"a":[]}}]]]',
        b'{"a":1,"\\u0061":2}',
        b'{"\\/":1,"/":2}',
        b'{"\\ud83d\\ude00":1,"\xf0\x9f\x98\x80":2}',
    ],
)
def test_duplicate_keys_rejected_at_any_depth(body: bytes) -> None:
    with pytest.raises(ValueError, match="duplicate key"):
        native.parse_json(body)


def test_many_keys_duplicate_found() -> None:
    members = ",".join(f'"k{i}":{i}' for i in range(10_000))
    assert len(native.parse_json(f"{{{members}}}".encode())) == 10_000
    with pytest.raises(ValueError, match="duplicate key"):
        native.parse_json(f'{{{members},"k5000":0}}'.encode())


def test_similar_keys_are_distinct() -> None:
    value = native.parse_json(b'{"a":1,"A":2,"\xc3\xa9":3,"e\\u0301":4,"a ":5}')
    assert len(value) == 5


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_depth_limit() -> None:
    assert native.parse_json(nested(32)) is not None
    with pytest.raises(ValueError, match="too deep"):
        native.parse_json(nested(33))
    objects = b'{"a":' * 32 + b"1" + b"}" * 32
    assert native.parse_json(objects) is not None
    with pytest.raises(ValueError, match="too deep"):
        native.parse_json(b'{"a":' * 33 + b"1" + b"}" * 33)
    assert native.parse_json(nested(3), max_depth=3) == [[[]]]
    with pytest.raises(ValueError, match="too deep"):
        native.parse_json(nested(4), max_depth=3)
    assert native.parse_json(b"7", max_depth=0) == 7
    with pytest.raises(ValueError, match="too deep"):
        native.parse_json(b"[]", max_depth=0)
    assert native.parse_json(nested(5_000), max_depth=5_000) is not None


@pytest.mark.parametrize("max_depth", [-1, 10_001, 2**40])
def test_bad_max_depth(max_depth: int) -> None:
    with pytest.raises((ValueError, OverflowError)):
        native.parse_json(b"1", max_depth=max_depth)


def test_huge_nesting_does_not_crash() -> None:
    with pytest.raises(ValueError, match="too deep"):
        native.parse_json(b"[" * 2_000_000)
    with pytest.raises(ValueError, match="too deep"):
        native.parse_json(b'{"a":' * 500_000, max_depth=10_000)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":"\xff"}',
        b'"\xc3"',
        b'"\xed\xa0\x80"',  # UTF-8-encoded surrogate
        b'"\xc0\xaf"',  # overlong
        b'"\xf4\x90\x80\x80"',  # beyond U+10FFFF
        b"{} \xff",
        "\ufeff{}".encode(),  # BOM
        '{"a":"é"}'.encode("utf-16"),
        '{"a":"é"}'.encode("latin-1"),
    ],
)
def test_bad_utf8(body: bytes) -> None:
    with pytest.raises(ValueError):
        native.parse_json(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{",
        b"[1,]",
        b'{"a":1,}',
        b"{a:1}",
        b"{'a':1}",
        b'{"a" 1}',
        b"[1 2]",
        b"{}{}",
        b"{} x",
        b"1 2",
        b"nul",
        b"True",
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"01",
        b"1.",
        b".5",
        b"+1",
        b"1e",
        b"0x10",
        b'"\\ud800"',
        b'"\\udc00"',
        b'"\\ud800\\u0041"',
        b'"\\u12"',
        b'"\\x41"',
        b'"a\nb"',
        b'"a\tb"',
        b'"\x00"',
        b'"abc',
        b"\x0c{}",
        b"// comment\n{}",
        b"{}\x00",
    ],
)
def test_invalid_json(body: bytes) -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        native.parse_json(body)


def test_only_bytes() -> None:
    with pytest.raises(TypeError):
        native.parse_json("{}")  # type: ignore[arg-type]


# --- differential properties against the pure-Python strict reference ----------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=30,
)
decimal_literals = st.from_regex(
    r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
).filter(lambda s: "." in s or "e" in s or "E" in s)


@settings(max_examples=1_000, deadline=None)
@given(json_values, st.booleans(), st.booleans())
def test_valid_documents_match_reference(value: Any, ensure_ascii: bool, spaced: bool) -> None:
    separators = (", ", ": ") if spaced else (",", ":")
    body = json.dumps(value, ensure_ascii=ensure_ascii, separators=separators).encode()
    if json_depth(value) > 32:
        return
    assert same(plain(native.parse_json(body)), reference(body))


def json_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((json_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((json_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=500, deadline=None)
@given(decimal_literals)
def test_decimals_match_reference(literal: str) -> None:
    value = native.parse_json(literal.encode())
    assert isinstance(value, native.JsonDecimal)
    assert value.literal == literal
    assert json.loads(literal, parse_float=Decimal) == Decimal(literal)


@st.composite
def mutated_documents(draw: st.DrawFn) -> bytes:
    """Valid JSON with a few bytes inserted, deleted or replaced."""
    body = bytearray(json.dumps(draw(json_values), ensure_ascii=draw(st.booleans())).encode())
    noise = st.sampled_from(
        [*b'{}[],:"\\ -+.0123456789eEtrufalsn\x00\x1f\x7f', 0xC3, 0xA9, 0xFF, 0xED, 0xA0, 0x80]
    )
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert" or pos == len(body):
            body.insert(pos, draw(noise))
        elif action == "delete":
            del body[pos]
        else:
            body[pos] = draw(noise)
    return bytes(body)


FUZZ_EXAMPLES = [
    b'{"a":1,"a":2}',
    b'"\\ud800"',
    b'"\\ud83d\\ude00"',
    b"[NaN]",
    b'{"a":"\xed\xa0\x80"}',
    b"[1.5e3, -0, 0.0]",
]


@settings(max_examples=2_000, deadline=None)
@given(
    st.one_of(
        mutated_documents(),
        st.binary(max_size=24),
        st.text(alphabet='{}[],:"\\ -.0123456789eEtrufalsnu', max_size=24).map(str.encode),
    )
)
@example(FUZZ_EXAMPLES[0])
@example(FUZZ_EXAMPLES[1])
@example(FUZZ_EXAMPLES[2])
@example(FUZZ_EXAMPLES[3])
@example(FUZZ_EXAMPLES[4])
@example(FUZZ_EXAMPLES[5])
def test_any_bytes_match_reference(body: bytes) -> None:
    try:
        expected = reference(body)
    except (ValueError, RecursionError, Rejected):
        with pytest.raises(ValueError):
            native.parse_json(body)
        return
    assert same(plain(native.parse_json(body)), expected)
