"""walletgate._native money: exact int64 units at scale 4, checked against decimal.Decimal."""

from __future__ import annotations

import re
from decimal import Context, Decimal, localcontext

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from walletgate import _native as native

MAX = 2**63 - 1
MIN = -MAX  # the spec bounds amounts at ±922337203685477.5807
INT64_MIN = -(2**63)
GRAMMAR = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]{1,4})?")
# Far more precision than any tested text needs, so Decimal is exact here.
EXACT = Context(prec=10_000)


def reference_parse(text: str) -> int | None:
    """Units of ``text`` per the spec, or None when it must be rejected."""
    if not GRAMMAR.fullmatch(text):
        return None
    with localcontext(EXACT):
        units = Decimal(text).scaleb(4)
    assert units == units.to_integral_value()
    value = int(units)
    return value if MIN <= value <= MAX else None


def reference_format(units: int) -> str:
    text = format(Decimal(units).scaleb(-4), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def test_constants() -> None:
    assert native.MAX_UNITS == MAX
    assert native.MIN_UNITS == MIN
    assert native.UNITS_PER_MAJOR == 10_000


@pytest.mark.parametrize(
    ("value", "units"),
    [
        ("-3", -30_000),
        (-3, -30_000),
        ("33.66", 336_600),
        ("0.0001", 1),
        ("922337203685477.5807", MAX),
        ("-922337203685477.5807", MIN),
        ("0", 0),
        ("-0", 0),
        ("-0.0", 0),
        ("4289.1", 42_891_000),
        ("1.0000", 10_000),
        ("-0.0001", -1),
        (0, 0),
        (3, 30_000),
        (922_337_203_685_477, 9_223_372_036_854_770_000),
        (-922_337_203_685_477, -9_223_372_036_854_770_000),
    ],
)
def test_accepts(value: str | int, units: int) -> None:
    assert native.parse_money(value) == units


def test_accepts_json_decimal() -> None:
    assert native.parse_money(native.parse_json(b"33.66")) == 336_600
    assert native.parse_money(native.parse_json(b"-0.0001")) == -1
    body = native.parse_json(b'{"money":922337203685477.5807,"bet":-3}')
    assert native.parse_money(body["money"]) == MAX
    assert native.parse_money(body["bet"]) == -30_000


REJECTED_TEXT = [
    "",
    "-",
    "+1",
    " 1",
    "1 ",
    "\t1",
    "1\n",
    "\u00a01",
    "1.00000",
    "0.00001",
    "1.23456",
    "1e3",
    "1E3",
    "1.5e1",
    "NaN",
    "nan",
    "-NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "01",
    "-01",
    "00.5",
    "1.",
    ".5",
    "-.5",
    "1..2",
    "1.2.3",
    "--1",
    "1,5",
    "1_000",
    "0x10",
    "١٢",
    "1.٢",
    "１",
    "\ud800",
    "922337203685477.5808",
    "-922337203685477.5809",
    "922337203685478",
    "-922337203685478",
    "9" * 40,
    "1" + "0" * 5000,
]


@pytest.mark.parametrize("text", REJECTED_TEXT)
def test_rejects_text(text: str) -> None:
    with pytest.raises(ValueError, match="invalid amount"):
        native.parse_money(text)


@pytest.mark.parametrize("literal", [b"1e3", b"1.00000", b"0.00001", b"-1E-2", b"1.5E+0"])
def test_rejects_json_decimal(literal: bytes) -> None:
    value = native.parse_json(literal)
    assert isinstance(value, native.JsonDecimal)
    with pytest.raises(ValueError, match="invalid amount"):
        native.parse_money(value)


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        1.5,
        0.0,
        float("nan"),
        None,
        Decimal("1"),
        b"1",
        [1],
        922_337_203_685_478,
        -922_337_203_685_478,
        2**63,
        -(2**63) - 1,
        10**100,
    ],
)
def test_rejects_other(value: object) -> None:
    with pytest.raises(ValueError, match="invalid amount"):
        native.parse_money(value)  # type: ignore[arg-type]


def test_boundaries() -> None:
    assert native.parse_money("922337203685477.5807") == MAX
    assert native.parse_money("-922337203685477.5807") == MIN
    for past in ("922337203685477.5808", "-922337203685477.5808", "-922337203685477.5809"):
        with pytest.raises(ValueError):
            native.parse_money(past)
    assert native.format_units(MAX) == "922337203685477.5807"
    # Balances use the whole int64 range, so formatting does too.
    assert native.format_units(INT64_MIN) == "-922337203685477.5808"
    for past_units in (MAX + 1, INT64_MIN - 1):
        with pytest.raises(OverflowError):
            native.format_units(past_units)


@pytest.mark.parametrize(
    ("units", "text"),
    [
        (0, "0"),
        (1, "0.0001"),
        (-1, "-0.0001"),
        (42_891_000, "4289.1"),
        (336_600, "33.66"),
        (-30_000, "-3"),
        (10_000, "1"),
        (1_000_000, "100"),
        (1_234_567, "123.4567"),
    ],
)
def test_format(units: int, text: str) -> None:
    assert native.format_units(units) == text


# Amounts within the spec's bounds (the conversions below take the whole int64 range).
units = st.one_of(
    st.integers(MIN, MAX),
    st.integers(MIN, MIN + 100_000),
    st.integers(MAX - 100_000, MAX),
    st.integers(-100_000_000, 100_000_000),
)


@settings(max_examples=10_000, deadline=None)
@given(units)
@example(MAX)
@example(MIN)
@example(0)
@example(-1)
@example(1)
def test_round_trip_matches_decimal(value: int) -> None:
    text = native.format_units(value)
    assert text == reference_format(value)
    assert GRAMMAR.fullmatch(text)
    assert Decimal(text) == Decimal(value).scaleb(-4)
    assert native.parse_money(text) == value


@st.composite
def spelled_units(draw: st.DrawFn) -> tuple[str, int]:
    """An in-range amount written with any valid number of decimals (trailing zeros too)."""
    value = draw(units)
    needed = len(reference_format(value).partition(".")[2])
    places = draw(st.integers(needed, 4))
    with localcontext(EXACT):
        text = format(Decimal(value).scaleb(-4).quantize(Decimal(1).scaleb(-places)), "f")
    if value < 0 and not text.startswith("-"):
        text = "-" + text
    return text, value


@settings(max_examples=1_500, deadline=None)
@given(spelled_units())
def test_parse_matches_decimal(case: tuple[str, int]) -> None:
    text, value = case
    assert reference_parse(text) == value
    assert native.parse_money(text) == value


@settings(max_examples=1_500, deadline=None)
@given(
    st.one_of(
        st.from_regex(GRAMMAR, fullmatch=True),
        st.from_regex(r"-?[0-9]{14,17}(\.[0-9]{1,5})?", fullmatch=True),
        st.text(alphabet="0123456789.-+eE nNaIfity_,", max_size=24),
        st.text(max_size=12),
    )
)
@example("922337203685477.5807")
@example("922337203685477.5808")
@example("-922337203685477.5808")
@example("-922337203685477.5809")
def test_any_text_matches_reference(text: str) -> None:
    expected = reference_parse(text)
    if expected is None:
        with pytest.raises(ValueError):
            native.parse_money(text)
    else:
        assert native.parse_money(text) == expected


@settings(max_examples=2_000, deadline=None)
@given(
    st.one_of(
        st.integers(),
        st.integers(-922_337_203_685_480, 922_337_203_685_480),
        st.integers(922_337_203_685_470, 922_337_203_685_480),
        st.integers(-922_337_203_685_480, -922_337_203_685_470),
    )
)
def test_int_input(value: int) -> None:
    units = value * 10_000
    if MIN <= units <= MAX:
        assert native.parse_money(value) == units
        assert native.parse_money(native.parse_json(str(value).encode())) == units
        assert native.parse_money(str(value)) == units
    else:
        with pytest.raises(ValueError):
            native.parse_money(value)


@settings(max_examples=2_000, deadline=None)
@given(st.integers(INT64_MIN, MAX))
def test_conversions_truncate_toward_zero(value: int) -> None:
    with localcontext(EXACT):
        assert native.units_to_cents(value) == int(Decimal(value) / 100)
        assert native.units_to_coins(value) == int(Decimal(value) / 10_000)


@settings(max_examples=2_000, deadline=None)
@given(st.one_of(st.integers(INT64_MIN // 100 - 10, MAX // 100 + 10), st.integers(-(2**70), 2**70)))
def test_cents_to_units(cents: int) -> None:
    if INT64_MIN <= cents * 100 <= MAX:
        assert native.cents_to_units(cents) == cents * 100
    else:
        with pytest.raises(OverflowError):
            native.cents_to_units(cents)


@settings(max_examples=2_000, deadline=None)
@given(st.one_of(st.integers(INT64_MIN // 10_000 - 10, MAX // 10_000 + 10), st.integers()))
def test_coins_to_units(coins: int) -> None:
    if INT64_MIN <= coins * 10_000 <= MAX:
        assert native.coins_to_units(coins) == coins * 10_000
    else:
        with pytest.raises(OverflowError):
            native.coins_to_units(coins)


@settings(max_examples=2_000, deadline=None)
@given(st.integers(INT64_MIN, MAX), st.integers(INT64_MIN, MAX))
@example(MAX, 1)
@example(INT64_MIN, -1)
@example(MAX, INT64_MIN)
def test_checked_add(a: int, b: int) -> None:
    if INT64_MIN <= a + b <= MAX:
        assert native.checked_add_units(a, b) == a + b
    else:
        with pytest.raises(OverflowError):
            native.checked_add_units(a, b)


def test_conversion_examples() -> None:
    assert native.units_to_cents(12_345) == 123
    assert native.units_to_cents(-12_345) == -123
    assert native.units_to_coins(19_999) == 1
    assert native.units_to_coins(-19_999) == -1
    assert native.cents_to_units(123) == 12_300
    assert native.coins_to_units(10) == 100_000
    for func in (native.units_to_cents, native.units_to_coins, native.format_units):
        with pytest.raises(OverflowError):
            func(2**63)
