"""walletgate._native signatures: every vector of shared/spec/signatures.md, through Python."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walletgate import _native as native

# --- MINI.GAME / OMG ------------------------------------------------------------------------------

MG_QUERY = b"trace_id=dhf1aboc1iio"
MG_KEY = b"39a6581c31ef3203a22edb2daa2ab6d1"
MG_BODY = (
    b'{"player_logon_token":"b27cfe9b-f01c-11ee-a0b5-000c2901d9cc",'
    b'"account_id":"1002402","timestamp":1711971655}'
)
MG_SIGN = "e3f8dc79e875e46f6755ef540c2d24f3"

MG_CHANGE_BODY = (
    b'{"app_id":"10013","bet":"3","game_id":74,"money":"-3",'
    b'"order_id":"20240716195311drxaoz1mxx6g",'
    b'"player_login_token":"66de94a2-4368-11ef-a0be-581122c6f6d4",'
    b'"session_id":"1813180074526625845","timestamp":1721130791,"uname":"1006417",'
    b'"end_round":false,"type":1,"cancel_order_id":"","award_order_ids":null}'
)
MG_CHANGE_SIGN = "1d616dbce80f9c95e17a7a544f5bd71f"
MG_CHANGE_SIGN_SPACED = "851203cb2a7e43a5176782bcba4e0125"
MG_CURLY_SIGN = "d66a60d2a6565c3f933386c41b3dfba0"


def test_minigame_official_vector() -> None:
    assert native.minigame_sign(MG_QUERY, MG_BODY, MG_KEY) == MG_SIGN
    hashed = (
        'trace_id=dhf1aboc1iio{"player_logon_token":"b27cfe9b-f01c-11ee-a0b5-000c2901d9cc",'
        '"account_id":"1002402","timestamp":1711971655}39a6581c31ef3203a22edb2daa2ab6d1'
    )
    assert native.minigame_sign(hashed.encode(), b"", b"") == MG_SIGN
    assert native.verify_minigame_sign(MG_QUERY, MG_BODY, MG_KEY, MG_SIGN)
    assert native.verify_minigame_sign(MG_QUERY, MG_BODY, MG_KEY, MG_SIGN.encode())


@pytest.mark.parametrize(
    "header", [MG_SIGN.upper(), "E3f8DC79e875e46f6755ef540c2d24F3", MG_SIGN.upper().encode()]
)
def test_minigame_header_case_is_ignored(header: str | bytes) -> None:
    assert native.verify_minigame_sign(MG_QUERY, MG_BODY, MG_KEY, header)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        b"",
        MG_SIGN[:-1],
        MG_SIGN + "0",
        " " + MG_SIGN,
        MG_SIGN + "\n",
        "e3f8dc79e875e46f6755ef540c2d24f4",
        "\ud800" * 32,
        "é" * 16,
        MG_SIGN.replace("3", "\x13"),
    ],
)
def test_minigame_bad_headers_fail(header: str | bytes | None) -> None:
    assert not native.verify_minigame_sign(MG_QUERY, MG_BODY, MG_KEY, header)


def test_minigame_wrong_inputs_fail() -> None:
    assert not native.verify_minigame_sign(MG_QUERY, MG_BODY, MG_KEY[:-1] + b"2", MG_SIGN)
    assert not native.verify_minigame_sign(b"", MG_QUERY + b"&" + MG_BODY, MG_KEY, MG_SIGN)
    assert not native.verify_minigame_sign(b"", MG_BODY, MG_KEY, MG_SIGN)


def test_minigame_derived_change_balance() -> None:
    assert native.minigame_sign(MG_QUERY, MG_CHANGE_BODY, MG_KEY) == MG_CHANGE_SIGN
    assert native.verify_minigame_sign(MG_QUERY, MG_CHANGE_BODY, MG_KEY, MG_CHANGE_SIGN)


def test_minigame_derived_reserialised_body_must_fail() -> None:
    spaced = json.dumps(json.loads(MG_CHANGE_BODY)).encode()
    assert b'", "' in spaced
    assert b'": "' in spaced
    assert native.minigame_sign(MG_QUERY, spaced, MG_KEY) == MG_CHANGE_SIGN_SPACED
    # A sign over re-serialised bytes does not verify the compact bytes actually received.
    assert not native.verify_minigame_sign(MG_QUERY, MG_CHANGE_BODY, MG_KEY, MG_CHANGE_SIGN_SPACED)
    assert MG_CHANGE_SIGN_SPACED != MG_CHANGE_SIGN


def test_minigame_derived_curly_quotes() -> None:
    curly = MG_BODY.decode().replace('"', "\u201c").encode()
    assert native.minigame_sign(MG_QUERY, curly, MG_KEY) == MG_CURLY_SIGN
    assert not native.verify_minigame_sign(MG_QUERY, MG_BODY, MG_KEY, MG_CURLY_SIGN)
    assert not native.verify_minigame_sign(MG_QUERY, curly, MG_KEY, MG_SIGN)


def test_minigame_argument_types() -> None:
    with pytest.raises(TypeError):
        native.minigame_sign("trace_id=x", MG_BODY, MG_KEY)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.verify_minigame_sign(MG_QUERY, MG_BODY, MG_KEY, 123)  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=2048), st.binary(max_size=64))
def test_minigame_matches_hashlib(query: bytes, body: bytes, key: bytes) -> None:
    expected = hashlib.md5(query + body + key).hexdigest()
    assert native.minigame_sign(query, body, key) == expected
    assert native.verify_minigame_sign(query, body, key, expected)
    assert native.verify_minigame_sign(query, body, key, expected.upper())
    flipped = ("0" if expected[0] != "0" else "1") + expected[1:]
    assert not native.verify_minigame_sign(query, body, key, flipped)


def test_large_inputs_hash_without_the_gil_and_still_match() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: hashed with the GIL released
    expected = hashlib.md5(MG_QUERY + body + MG_KEY).hexdigest()
    assert native.minigame_sign(MG_QUERY, body, MG_KEY) == expected
    assert native.verify_minigame_sign(MG_QUERY, body, MG_KEY, expected.upper())
    assert not native.verify_minigame_sign(MG_QUERY, body[:-1], MG_KEY, expected)
    assert (
        native.hmac_sha256_hex(MG_KEY, body) == hmac.new(MG_KEY, body, hashlib.sha256).hexdigest()
    )


# --- Midas v1 ------------------------------------------------------------------------------------

APP_KEY = "zNLgAGgqsEWJOg1nFVaO5r7fAlIQxr1u"
PATH = "/cgi-bin/midas/getbalance"
SANDBOX_PATH = "/cgi-bin/midas/sandbox/getbalance"
PAY_PATH = "/cgi-bin/midas/pay"
ACCESS_TOKEN = "ACCESSTOKEN"
SESSION_KEY = "V7Q38/i2KXaqrQyl2Yx9Hg=="
PARAMS = [
    ("openid", "odkx20ENSNa2w5y3g_qOkOvBNM1g"),
    ("appid", "wx1234567"),
    ("offer_id", "12345678"),
    ("ts", "1507530737"),
    ("zone_id", "1"),
    ("pf", "android"),
]
SIG = "1ad64e8dcb2ec1dc486b7fdf01f4a15159fc623dc3422470e51cf6870734726b"
MP_SIG = "ff4c5bb39dea1002a8f03be0438724e1a8bcea5ebce8f221f9b9fea3bcf3bf76"
MP_SIG_STRING = (
    "access_token=ACCESSTOKEN&appid=wx1234567&offer_id=12345678"
    "&openid=odkx20ENSNa2w5y3g_qOkOvBNM1g&pf=android"
    "&sig=1ad64e8dcb2ec1dc486b7fdf01f4a15159fc623dc3422470e51cf6870734726b"
    "&ts=1507530737&zone_id=1&org_loc=/cgi-bin/midas/getbalance"
    "&method=POST&session_key=V7Q38/i2KXaqrQyl2Yx9Hg=="
)


def mp_params(params: list[tuple[str, str]], sig: str) -> list[tuple[str, str]]:
    return [*params, ("access_token", ACCESS_TOKEN), ("sig", sig)]


def test_midas_official_sig() -> None:
    assert native.midas_sig(PARAMS, PATH, APP_KEY) == SIG
    string = (
        "appid=wx1234567&offer_id=12345678&openid=odkx20ENSNa2w5y3g_qOkOvBNM1g&pf=android"
        "&ts=1507530737&zone_id=1&org_loc=/cgi-bin/midas/getbalance&method=POST"
        "&secret=zNLgAGgqsEWJOg1nFVaO5r7fAlIQxr1u"
    )
    assert native.hmac_sha256_hex(APP_KEY.encode(), string.encode()) == SIG
    assert native.verify_midas_sig(PARAMS, PATH, APP_KEY, SIG)
    assert native.verify_midas_sig(PARAMS, PATH, APP_KEY, SIG.encode())
    assert native.verify_midas_sig(tuple(PARAMS), PATH, APP_KEY, SIG)
    assert not native.verify_midas_sig(PARAMS, PATH, APP_KEY, None)
    assert not native.verify_midas_sig(PARAMS, PATH, APP_KEY, "")
    assert not native.verify_midas_sig(PARAMS, PATH, APP_KEY, SIG.upper())
    assert not native.verify_midas_sig(PARAMS, SANDBOX_PATH, APP_KEY, SIG)
    assert not native.verify_midas_sig(PARAMS[:-1], PATH, APP_KEY, SIG)


def test_midas_official_mp_sig() -> None:
    params = mp_params(PARAMS, SIG)
    assert native.midas_mp_sig(params, PATH, SESSION_KEY) == MP_SIG
    assert native.hmac_sha256_hex(SESSION_KEY.encode(), MP_SIG_STRING.encode()) == MP_SIG
    assert native.verify_midas_mp_sig(params, PATH, SESSION_KEY, MP_SIG)
    assert not native.verify_midas_mp_sig(params, PATH, SESSION_KEY, None)
    assert not native.verify_midas_mp_sig(params, PATH, APP_KEY, MP_SIG)


def test_midas_sandbox() -> None:
    sig = native.midas_sig(PARAMS, SANDBOX_PATH, APP_KEY)
    assert sig == "f8f9f6ac64eb1cf4a5f2f0235f72fe69af0d2ceb2b26bed5a024244140643bb4"
    mp_sig = native.midas_mp_sig(mp_params(PARAMS, sig), SANDBOX_PATH, SESSION_KEY)
    assert mp_sig == "ba1b7d2bce2e824cadf56c143fab6739e843f7b5578c079ec1432f12e5120b6c"


def test_midas_pay() -> None:
    params = [*PARAMS, ("amt", "10"), ("bill_no", "BILL0001")]
    sig = native.midas_sig(params, PAY_PATH, APP_KEY)
    assert sig == "14706e70591862f7d6123db4ca13dc407790034db5ca2f48656349943fb66b99"
    mp_sig = native.midas_mp_sig(mp_params(params, sig), PAY_PATH, SESSION_KEY)
    assert mp_sig == "c53c5b4f57e94dee76989622eb6590dea9ab161ff0d84bf5cb89c51f1e6cae25"
    assert native.verify_midas_sig(params, PAY_PATH, APP_KEY, sig)
    assert native.verify_midas_mp_sig(mp_params(params, sig), PAY_PATH, SESSION_KEY, mp_sig)


def test_midas_placeholder_sig() -> None:
    placeholder = "d1f0a41272f9b85618361323e1b19cd8cb0213f21b935aeaa39c160892031e97"
    mp_sig = native.midas_mp_sig(mp_params(PARAMS, placeholder), PATH, SESSION_KEY)
    assert mp_sig == "1314420754fee7a7a149790d10fd0b2dc9b2fdc54eed0d1ee2d282ad5bb01e44"


def test_midas_wrong_mp_sig_without_access_token() -> None:
    wrong = native.midas_mp_sig([*PARAMS, ("sig", SIG)], PATH, SESSION_KEY)
    assert wrong == "0d76d830ebd02e962238de44788ff419d2af047ae9ca8479567506aec82e96ad"
    assert wrong != MP_SIG
    assert not native.verify_midas_mp_sig(mp_params(PARAMS, SIG), PATH, SESSION_KEY, wrong)


def test_midas_wrong_mp_sig_with_decoded_session_key() -> None:
    wrong = native.hmac_sha256_hex(base64.b64decode(SESSION_KEY), MP_SIG_STRING.encode())
    assert wrong == "5234e586f55f41810281cb8144066328d6505e090b8c5e37689e59acb36063db"
    assert wrong != MP_SIG
    assert not native.verify_midas_mp_sig(mp_params(PARAMS, SIG), PATH, SESSION_KEY, wrong)


def test_midas_argument_types() -> None:
    with pytest.raises(TypeError):
        native.midas_sig("appid=1", PATH, APP_KEY)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.midas_sig([("appid", 1)], PATH, APP_KEY)  # type: ignore[list-item]
    with pytest.raises((TypeError, ValueError)):
        native.midas_sig([("appid", "1", "x")], PATH, APP_KEY)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        native.verify_midas_sig(PARAMS, PATH, APP_KEY, 1)  # type: ignore[arg-type]


def reference_midas(params: list[tuple[str, str]], path: str, label: str, secret: str) -> str:
    string_a = "&".join(f"{k}={v}" for k, v in sorted(params))
    message = f"{string_a}&org_loc={path}&method=POST&{label}={secret}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.text(max_size=12), st.text(max_size=24)), max_size=40),
    st.text(max_size=40),
    st.text(max_size=80),
)
def test_midas_matches_reference(params: list[tuple[str, str]], path: str, secret: str) -> None:
    sig = reference_midas(params, path, "secret", secret)
    assert native.midas_sig(params, path, secret) == sig
    assert native.verify_midas_sig(params, path, secret, sig)
    mp_sig = reference_midas(params, path, "session_key", secret)
    assert native.midas_mp_sig(params, path, secret) == mp_sig
    assert native.verify_midas_mp_sig(params, path, secret, mp_sig)
    assert not native.verify_midas_mp_sig(params, path, secret, sig)


# --- WeChat login state and helpers --------------------------------------------------------------


def test_login_state_vector() -> None:
    signature = native.hmac_sha256_hex(b"o0q0otL8aEzpcZL/FT9WsQ==", b'{"foo":"bar"}')
    assert signature == "654571f79995b2ce1e149e53c0a33dc39c0a74090db514261454e8dbe432aa0b"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=500))
def test_hmac_matches_stdlib(key: bytes, message: bytes) -> None:
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    assert native.hmac_sha256_hex(key, message) == expected


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (b"", b"", True),
        ("", b"", True),
        (b"secret", b"secret", True),
        ("secret", b"secret", True),
        ("tökén", "tökén".encode(), True),
        (b"secret", b"secreT", False),
        (b"secret", b"secret ", False),
        (b"secret", b"", False),
        ("\ud800", "\ud800", False),
    ],
)
def test_constant_time_eq(a: str | bytes, b: str | bytes, equal: bool) -> None:
    assert native.constant_time_eq(a, b) is equal
    assert native.constant_time_eq(b, a) is equal


def test_constant_time_eq_types() -> None:
    with pytest.raises(TypeError):
        native.constant_time_eq(b"a", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.constant_time_eq(1, b"a")  # type: ignore[arg-type]
