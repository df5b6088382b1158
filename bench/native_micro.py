"""Micro-benchmark: walletgate._native against the pure-Python equivalents.

Plain ``time.perf_counter_ns`` loops, no extra dependencies (orjson is timed only when it is
installed, as a reference). Each op is checked for equal results first, then timed as the best
of several rounds. ``--quick`` runs few iterations, for CI.

    python bench/native_micro.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from walletgate import _native as native

QUERY = b"trace_id=dhf1aboc1iio"
KEY = b"39a6581c31ef3203a22edb2daa2ab6d1"
BODY = (
    b'{"app_id":"10013","bet":"3","game_id":74,"money":"-3",'
    b'"order_id":"20240716195311drxaoz1mxx6g",'
    b'"player_login_token":"66de94a2-4368-11ef-a0be-581122c6f6d4",'
    b'"session_id":"1813180074526625845","timestamp":1721130791,"uname":"1006417",'
    b'"end_round":false,"type":1,"cancel_order_id":"","award_order_ids":null}'
)
SIGN_HEADER = "1D616DBCE80F9C95E17A7A544F5BD71F"  # as a client might send it

APP_KEY = "zNLgAGgqsEWJOg1nFVaO5r7fAlIQxr1u"
SESSION_KEY = "V7Q38/i2KXaqrQyl2Yx9Hg=="
ORG_LOC = "/cgi-bin/midas/pay"
PARAMS = [
    ("openid", "odkx20ENSNa2w5y3g_qOkOvBNM1g"),
    ("appid", "wx1234567"),
    ("offer_id", "12345678"),
    ("ts", "1507530737"),
    ("zone_id", "1"),
    ("pf", "android"),
    ("amt", "10"),
    ("bill_no", "BILL0001"),
]
SIG = "14706e70591862f7d6123db4ca13dc407790034db5ca2f48656349943fb66b99"
MP_PARAMS = [*PARAMS, ("access_token", "ACCESSTOKEN"), ("sig", SIG)]
MP_SIG = "c53c5b4f57e94dee76989622eb6590dea9ab161ff0d84bf5cb89c51f1e6cae25"

MONEY_TEXT = "-922337203685.4775"
MONEY_UNITS = 42_891_000

GRAMMAR = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]{1,4})?")
MIN_UNITS, MAX_UNITS = -(2**63), 2**63 - 1
SCALE_UP = Decimal(10_000)


# --- the pure-Python equivalents -----------------------------------------------------------------


def py_minigame_sign(query: bytes, body: bytes, key: bytes) -> str:
    return hashlib.md5(query + body + key).hexdigest()


def py_verify_minigame_sign(query: bytes, body: bytes, key: bytes, sign: str | None) -> bool:
    if sign is None:
        return False
    expected = hashlib.md5(query + body + key).hexdigest()
    return hmac.compare_digest(expected, sign.lower())


def py_midas(params: list[tuple[str, str]], org_loc: str, label: str, secret: str) -> str:
    string_a = "&".join(f"{k}={v}" for k, v in sorted(params))
    message = f"{string_a}&org_loc={org_loc}&method=POST&{label}={secret}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def py_verify_midas_mp_sig(
    params: list[tuple[str, str]], org_loc: str, session_key: str, mp_sig: str
) -> bool:
    return hmac.compare_digest(py_midas(params, org_loc, "session_key", session_key), mp_sig)


def py_parse_money(text: str) -> int:
    if not GRAMMAR.fullmatch(text):
        raise ValueError("invalid amount")
    units = int(Decimal(text) * SCALE_UP)
    if not MIN_UNITS <= units <= MAX_UNITS:
        raise ValueError("invalid amount")
    return units


def py_format_units(units: int) -> str:
    text = format(Decimal(units).scaleb(-4), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def py_parse_json(body: bytes) -> Any:
    return json.loads(body, object_pairs_hook=_no_duplicates, parse_float=Decimal)


# --- timing --------------------------------------------------------------------------------------


def per_call_ns(func: Callable[[], object], iterations: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(iterations):
            func()
        best = min(best, (time.perf_counter_ns() - start) / iterations)
    return best


def check() -> None:
    assert native.minigame_sign(QUERY, BODY, KEY) == py_minigame_sign(QUERY, BODY, KEY)
    assert native.verify_minigame_sign(QUERY, BODY, KEY, SIGN_HEADER)
    assert py_verify_minigame_sign(QUERY, BODY, KEY, SIGN_HEADER)
    assert native.midas_sig(PARAMS, ORG_LOC, APP_KEY) == SIG
    assert py_midas(PARAMS, ORG_LOC, "secret", APP_KEY) == SIG
    assert native.verify_midas_mp_sig(MP_PARAMS, ORG_LOC, SESSION_KEY, MP_SIG)
    assert py_verify_midas_mp_sig(MP_PARAMS, ORG_LOC, SESSION_KEY, MP_SIG)
    assert native.parse_money(MONEY_TEXT) == py_parse_money(MONEY_TEXT)
    assert native.format_units(MONEY_UNITS) == py_format_units(MONEY_UNITS) == "4289.1"
    assert native.parse_json(BODY) == py_parse_json(BODY)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations (CI smoke run)")
    args = parser.parse_args()
    iterations, rounds = (2_000, 3) if args.quick else (100_000, 7)

    check()
    cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        (
            "minigame_sign",
            lambda: native.minigame_sign(QUERY, BODY, KEY),
            lambda: py_minigame_sign(QUERY, BODY, KEY),
        ),
        (
            "verify_minigame_sign",
            lambda: native.verify_minigame_sign(QUERY, BODY, KEY, SIGN_HEADER),
            lambda: py_verify_minigame_sign(QUERY, BODY, KEY, SIGN_HEADER),
        ),
        (
            "midas_sig",
            lambda: native.midas_sig(PARAMS, ORG_LOC, APP_KEY),
            lambda: py_midas(PARAMS, ORG_LOC, "secret", APP_KEY),
        ),
        (
            "verify_midas_mp_sig",
            lambda: native.verify_midas_mp_sig(MP_PARAMS, ORG_LOC, SESSION_KEY, MP_SIG),
            lambda: py_verify_midas_mp_sig(MP_PARAMS, ORG_LOC, SESSION_KEY, MP_SIG),
        ),
        (
            "parse_money",
            lambda: native.parse_money(MONEY_TEXT),
            lambda: py_parse_money(MONEY_TEXT),
        ),
        (
            "format_units",
            lambda: native.format_units(MONEY_UNITS),
            lambda: py_format_units(MONEY_UNITS),
        ),
        (
            "parse_json (strict json.loads)",
            lambda: native.parse_json(BODY),
            lambda: py_parse_json(BODY),
        ),
    ]
    try:
        import orjson

        cases.append(
            (
                "parse_json (orjson, reference)",
                lambda: native.parse_json(BODY),
                lambda: orjson.loads(BODY),
            )
        )
    except ImportError:
        pass

    header = f"{'op':<32} {'native ns/call':>15} {'python ns/call':>15} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    slower = []
    for name, native_call, python_call in cases:
        native_ns = per_call_ns(native_call, iterations, rounds)
        python_ns = per_call_ns(python_call, iterations, rounds)
        ratio = python_ns / native_ns
        print(f"{name:<32} {native_ns:>15.0f} {python_ns:>15.0f} {ratio:>6.1f}x")
        if ratio < 1 and "reference" not in name:
            slower.append(name)
    print("ratio = python / native (higher is better for native)")
    if slower and not args.quick:
        print(f"native is slower on: {', '.join(slower)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
