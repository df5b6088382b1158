"""What all four protocol families do alike: read the body, parse it strictly, answer, log.

A handler reads the raw body once (bounded by ``max_body_bytes``), identifies the tenant,
authenticates, validates, makes one ledger call, and answers with an orjson body. It records
what the log line and the metrics need in ``scope["wg.log"]`` (see :func:`note`); the access-log
middleware emits it, so a handler never formats a log line itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from walletgate import _native
from walletgate.config import Config
from walletgate.ledger.core import INT64_MAX, INT64_MIN, Ledger
from walletgate.metrics import Metrics

LOG_SCOPE_KEY = "wg.log"
JSON_MEDIA_TYPE = "application/json"
UINT64_MAX = 2**64 - 1
UINT64_MAX_DIGITS = len(str(UINT64_MAX))
# A body bound is an int64 at most: a content-length of more digits exceeds any of them.
MAX_CONTENT_LENGTH_DIGITS = len(str(INT64_MAX))
# Free text that is only logged (MINI.GAME's round_id, Midas's pay_item) is cut to this: it goes
# into the access-log line and the journal record of its request.
MAX_LOGGED_TEXT_CHARS: Final = 256


@dataclass(frozen=True, slots=True)
class GatewayContext:
    """Everything a protocol module needs, built once at start-up by ``app.create_app``."""

    config: Config
    ledger: Ledger
    metrics: Metrics


class BodyTooLarge(Exception):
    """The body exceeds ``max_body_bytes``; the protocol answers its malformed-input code."""


class BodyRequest(Request):
    """A request whose body the dispatcher has already read (``None``: it was too large).

    The access middleware reads the body of a protocol endpoint straight from ASGI ``receive``,
    which costs less than Starlette's stream generator; :func:`read_body` then only hands it on.
    """

    def __init__(self, scope: Scope, receive: Receive, body: bytes | None) -> None:
        super().__init__(scope, receive)
        self.preread_body = body


class JsonResponse(Response):
    """A JSON body with the two headers every protocol answer carries, built without Starlette's
    generic header logic (the protocol endpoints answer thousands of times a second)."""

    media_type = JSON_MEDIA_TYPE

    def __init__(self, body: bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"content-length", str(len(body)).encode("ascii")),
            (b"content-type", b"application/json"),
        ]


def declared_too_large(headers: Sequence[tuple[bytes, bytes]], max_body_bytes: int) -> bool:
    """A ``content-length`` header (the raw ASGI headers) that is not a number or exceeds
    ``max_body_bytes``: such a body is refused without being read."""
    for name, value in headers:
        if name == b"content-length":
            # More digits than any bound has is too large, and int() is never asked to parse
            # a header of thousands of digits.
            return (
                not value.isdigit()
                or len(value) > MAX_CONTENT_LENGTH_DIGITS
                or int(value) > max_body_bytes
            )
    return False


def declares_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a request comes with a body: a non-zero ``content-length`` or a
    ``transfer-encoding`` (chunked) header, in the raw ASGI headers."""
    for name, value in headers:
        if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
            return True
    return False


async def read_bounded(receive: Receive, max_body_bytes: int) -> bytes | None:
    """The whole body from ASGI ``receive``, or ``None`` once it exceeds ``max_body_bytes``
    (the rest is not read: the connection answers and is done with the request)."""
    message = await receive()
    chunks: list[bytes] = [message.get("body", b"")]
    size = len(chunks[0])
    while size <= max_body_bytes and message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            break  # a disconnect: what arrived is all there is, and nobody reads the answer
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
    if size > max_body_bytes:
        return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The raw body, read once and never beyond ``max_body_bytes`` (raises BodyTooLarge)."""
    if isinstance(request, BodyRequest):
        if request.preread_body is None or len(request.preread_body) > max_body_bytes:
            raise BodyTooLarge
        return request.preread_body
    if declared_too_large(request.scope["headers"], max_body_bytes):
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def raw_query(request: Request) -> bytes:
    """The query string exactly as received (no decoding, no reordering)."""
    query = request.scope.get("query_string", b"")
    assert isinstance(query, bytes)
    return query


def parse_object(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object (strict: no duplicate keys, exact numbers), or ``None``."""
    try:
        parsed = _native.parse_json(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def merchant_id_only(raw: bytes, name: str) -> Any:
    """The ``name`` member of a body that :func:`parse_object` refused, read leniently (orjson
    keeps the last of duplicate keys), or ``None``.

    The MINI.GAME signature rule allows no parse before the sign check but reading the merchant
    id to choose the key, and the spec checks duplicate keys after the sign: so a body that is
    not strict JSON but names its merchant is answered "sign invalid" when unsigned.
    """
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = _lenient_loads(raw)
    return parsed.get(name) if isinstance(parsed, dict) else None


def _not_built(_literal: str) -> None:
    return None


def _lenient_loads(raw: bytes) -> Any:
    """The standard library's parser, for the JSON orjson refuses (an integer beyond a double's
    range, a lone surrogate escape), or ``None``. Numbers are not built, so no count of digits
    can fail; this runs only on bodies that both fast parsers refused."""
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_int=_not_built,
            parse_float=_not_built,
            parse_constant=_not_built,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def logged_ref(value: str | int) -> str | int:
    """A reference that is only logged, as the access log and the journal keep it: an integer
    that fits 64 bits as it is, anything else as text of at most MAX_LOGGED_TEXT_CHARS (orjson,
    the journal's encoder, refuses wider integers)."""
    if type(value) is int:
        if INT64_MIN <= value <= UINT64_MAX:
            return value
        # The strict parser refuses integers of more than 4300 digits, so str() cannot fail.
        value = str(value)
    assert type(value) is str
    return value[:MAX_LOGGED_TEXT_CHARS]


def json_response(payload: Any, status_code: int = 200) -> Response:
    return JsonResponse(orjson.dumps(payload), status_code)


def empty_response(status_code: int) -> Response:
    return Response(b"", status_code=status_code)


def note(request: Request, family: str, endpoint: str, result: object, **refs: object) -> None:
    """Record the request's family, endpoint, result code and reference ids for the access log.

    Only reference ids belong in ``refs`` (trace_id, order_id, id, bill_no, tx_id, ...):
    never keys, tokens, session keys or signatures.
    """
    request.scope[LOG_SCOPE_KEY] = {
        "family": family,
        "endpoint": endpoint,
        "result": result,
        "refs": {k: v for k, v in refs.items() if v is not None},
    }


def is_int(value: Any) -> TypeGuard[int]:
    """A JSON integer (``bool`` is a distinct JSON type and does not count)."""
    return isinstance(value, int) and not isinstance(value, bool)


# JSON types by the Python type the native parser gives them, for has_wrong_json_type: a JSON
# number that is not an integer literal is a JsonDecimal (the right type for an integer field,
# but a format fault); bool is its own type.
JSON_TEXT: Final = (str,)
JSON_WHOLE: Final = (int, _native.JsonDecimal)
JSON_AMOUNT: Final = (str, int, _native.JsonDecimal)


def has_wrong_json_type(
    data: Mapping[str, Any], types: Mapping[str, tuple[type, ...]], *, null_is_missing: bool
) -> bool:
    """True when a present field has a JSON type its endpoint does not take (by Python type as
    the native parser gives them: a non-integer number is a JsonDecimal, bool is its own type).

    MINI.GAME answers that (10023) before any other fault, so each endpoint checks every
    field's type before any field's format. ``null_is_missing``: a JSON null counts as absent
    (seamless) or as a wrong type (transfer), as each family's field checks already treat it.
    """
    for name, allowed in types.items():
        if name not in data:
            continue
        value = data[name]
        if value is None and null_is_missing:
            continue
        if type(value) not in allowed:
            return True
    return False


def parse_uint(value: Any, maximum: int = UINT64_MAX) -> int | None:
    """An unsigned integer given as a JSON integer or a digit string, exactly, or ``None``."""
    assert maximum <= UINT64_MAX
    if is_int(value):
        return value if 0 <= value <= maximum else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        # The length first: a longer string is out of range anyway, and int() refuses strings
        # of over 4,300 digits with an exception (a bad request, not an internal error).
        if len(value) > UINT64_MAX_DIGITS or (len(value) > 1 and value[0] == "0"):
            return None
        number = int(value)
        return number if number <= maximum else None
    return None
